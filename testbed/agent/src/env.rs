//! A container's environment as the kubelet builds it: values, downward-API `fieldRef`s, the
//! in-cluster service variables, and `$(VAR)` expansion in values, command and args.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{Container, Pod};

/// Everything of the pod a `fieldRef` may name, and the Secrets its `envFrom`s name (read
/// before its containers start; a missing one is absent).
pub struct PodFacts<'a> {
    pub pod: &'a Pod,
    pub pod_ip: &'a str,
    pub host_ip: &'a str,
    pub secrets: &'a BTreeMap<String, BTreeMap<String, String>>,
}

fn field(facts: &PodFacts<'_>, path: &str) -> Result<String> {
    let meta = &facts.pod.metadata;
    let spec = facts.pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "status.podIP" => facts.pod_ip.to_string(),
        "status.hostIP" => facts.host_ip.to_string(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        other => {
            if let Some(label) = other
                .strip_prefix("metadata.labels['")
                .and_then(|l| l.strip_suffix("']"))
            {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(label).cloned())
                    .unwrap_or_default()
            } else {
                bail!("fieldRef {other:?} is not supported on process nodes")
            }
        }
    })
}

/// `$(NAME)` → the value of NAME when defined, `$$` → `$`; anything else stays as written.
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find('$') {
        out.push_str(&rest[..index]);
        let after = &rest[index + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some(value) = vars.get(&body[..end])
        {
            out.push_str(value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The environment of `container`, in definition order (later entries may use earlier ones).
pub fn environment(
    container: &Container,
    facts: &PodFacts<'_>,
    apiserver: (&str, u16),
) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    vars.insert(
        "KUBERNETES_SERVICE_HOST".to_string(),
        apiserver.0.to_string(),
    );
    vars.insert(
        "KUBERNETES_SERVICE_PORT".to_string(),
        apiserver.1.to_string(),
    );
    vars.insert(
        "KUBERNETES_SERVICE_PORT_HTTPS".to_string(),
        apiserver.1.to_string(),
    );
    vars.insert(
        "HOSTNAME".to_string(),
        facts.pod.metadata.name.clone().unwrap_or_default(),
    );
    // envFrom first (as the kubelet does): each key of the Secret, under its prefix.
    for from in container.env_from.iter().flatten() {
        let Some(secret) = &from.secret_ref else {
            bail!("envFrom: only secretRef is supported on process nodes");
        };
        match facts.secrets.get(&secret.name) {
            Some(data) => {
                let prefix = from.prefix.clone().unwrap_or_default();
                for (key, value) in data {
                    vars.insert(format!("{prefix}{key}"), value.clone());
                }
            }
            None if secret.optional == Some(true) => {}
            None => bail!("secret {:?} not found", secret.name),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => expand(value, &vars),
            (None, Some(from)) => match (&from.field_ref, &from.secret_key_ref) {
                (Some(field_ref), _) => field(facts, &field_ref.field_path)?,
                (None, Some(key_ref)) => {
                    let value = facts
                        .secrets
                        .get(&key_ref.name)
                        .and_then(|data| data.get(&key_ref.key));
                    match value {
                        Some(value) => value.clone(),
                        // An optional key that is not there leaves the variable unset.
                        None if key_ref.optional == Some(true) => continue,
                        None => bail!(
                            "env {}: secret {:?} has no key {:?}",
                            var.name,
                            key_ref.name,
                            key_ref.key
                        ),
                    }
                }
                (None, None) => bail!(
                    "env {}: only value, fieldRef and secretKeyRef are supported on process nodes",
                    var.name
                ),
            },
            (None, None) => String::new(),
        };
        vars.insert(var.name.clone(), value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_the_kubelet() {
        let vars = BTreeMap::from([("POD_IP".to_string(), "127.2.0.5".to_string())]);
        assert_eq!(
            expand("--http-addr=$(POD_IP):8000", &vars),
            "--http-addr=127.2.0.5:8000"
        );
        assert_eq!(
            expand("$(MISSING) $$(POD_IP) $", &vars),
            "$(MISSING) $(POD_IP) $"
        );
    }
}
