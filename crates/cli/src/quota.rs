//! `ferry get quota` / `ferry delete quota NAME`: local mode's ResourceQuotas (applied with
//! `ferry apply -f`), used / hard per resource.

use anyhow::{Result, bail};

use crate::ctl::{GetArgs, Output};
use crate::print;

/// Whether `kind` names ResourceQuotas.
pub fn is_quota(kind: &str) -> bool {
    matches!(
        kind.to_ascii_lowercase().as_str(),
        "quota" | "quotas" | "resourcequota" | "resourcequotas"
    )
}

/// `ferry get quota [NAME]`: used / hard per resource, as `kubectl describe quota` lists them.
pub async fn get(args: &GetArgs) -> Result<()> {
    let client = args.common.client()?;
    let mut quotas = client.quotas(&args.common.namespace).await?;
    if let Some(name) = &args.name {
        quotas.retain(|q| &q.name == name);
        if quotas.is_empty() {
            bail!("ResourceQuota {}/{name} not found", args.common.namespace);
        }
    }
    match args.output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&quotas)?),
        Some(Output::Yaml) => print!("{}", serde_norway::to_string(&quotas)?),
        _ if quotas.is_empty() => {
            eprintln!("No resources found in {} namespace.", args.common.namespace)
        }
        _ => {
            let mut rows = vec![
                ["NAME", "RESOURCE", "USED", "HARD"]
                    .map(String::from)
                    .to_vec(),
            ];
            for quota in &quotas {
                for (resource, used, hard) in &quota.resources {
                    rows.push(vec![
                        quota.name.clone(),
                        resource.clone(),
                        used.clone(),
                        hard.clone(),
                    ]);
                }
            }
            print!("{}", print::columns(&rows));
        }
    }
    Ok(())
}
