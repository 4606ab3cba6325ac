//! A replica that could not fetch its model, from its own words.

/// The part of a replica's words after `ModelFetchFailed: ` (what `ferry-storage` writes): the
/// URI and the store's answer, up to the end of that line.
pub fn fetch_failure(words: &str) -> Option<&str> {
    let marker = format!("{}: ", crate::reason::Reason::ModelFetchFailed);
    let start = words.find(&marker)? + marker.len();
    let rest = &words[start..];
    let line = rest.split('\n').next().unwrap_or(rest).trim();
    (!line.is_empty()).then_some(line)
}
