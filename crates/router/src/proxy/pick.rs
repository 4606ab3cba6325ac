//! What a request asks of the revision choice: a pinned revision, a chosen variant, a sticky
//! caller's key.

use http::{HeaderMap, header};

use super::{REVISION_HEADER, VARIANT_HEADER};

/// The variant a request chooses with `ferry-variant`.
pub(crate) fn variant_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(&VARIANT_HEADER)?
        .to_str()
        .ok()
        .filter(|v| !v.is_empty())
}

/// A sticky caller's key: the configured header's value, or the configured cookie's.
pub(crate) fn sticky_key<'a>(
    sticky: Option<&ferry_api::StickySpec>,
    headers: &'a HeaderMap,
) -> Option<&'a str> {
    let sticky = sticky?;
    if let Some(name) = &sticky.header {
        return headers
            .get(name.as_str())?
            .to_str()
            .ok()
            .filter(|v| !v.is_empty());
    }
    let name = sticky.cookie.as_deref()?;
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// The revision a request pins with `ferry-revision`.
pub(crate) fn pinned(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(&REVISION_HEADER)?
        .to_str()
        .ok()
        .filter(|v| !v.is_empty())
}
