//! `ferry get serverpool [NAME]` / `ferry delete serverpool NAME`: local mode's ServerPools
//! (applied with `ferry apply -f`): servers, placed and resident models, memory used of the
//! budget, evictions; `-o wide` lists each server, `-o json|yaml` the whole objects.

use anyhow::{Result, bail};

use crate::ctl::{GetArgs, Output};
use crate::print;

/// Whether `kind` names ServerPools.
pub fn is_pool(kind: &str) -> bool {
    matches!(
        kind.to_ascii_lowercase().as_str(),
        "serverpool" | "serverpools" | "pool" | "pools" | "serverpools.ferry.dev"
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1}Mi", bytes as f64 / f64::from(1 << 20))
}

/// `ferry get serverpool [NAME]`.
pub async fn get(args: &GetArgs) -> Result<()> {
    let client = args.common.client()?;
    let mut pools = client.pools(&args.common.namespace).await?;
    if let Some(name) = &args.name {
        pools.retain(|p| p.metadata.name.as_ref() == Some(name));
        if pools.is_empty() {
            bail!("ServerPool {}/{name} not found", args.common.namespace);
        }
    }
    let value = match &pools[..] {
        [one] if args.name.is_some() => serde_json::to_value(one)?,
        _ => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pools}),
    };
    match args.output {
        Some(Output::Json) => println!("{}", serde_json::to_string_pretty(&value)?),
        Some(Output::Yaml) => print!("{}", serde_norway::to_string(&value)?),
        _ if pools.is_empty() => {
            eprintln!("No resources found in {} namespace.", args.common.namespace)
        }
        wide => {
            let mut rows = vec![
                [
                    "NAME",
                    "SERVERS",
                    "MODELS",
                    "RESIDENT",
                    "USED",
                    "BUDGET",
                    "EVICTIONS",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for pool in &pools {
                let status = pool.status.clone().unwrap_or_default();
                rows.push(vec![
                    pool.metadata.name.clone().unwrap_or_default(),
                    format!("{}/{}", status.ready_servers, pool.spec.replicas()),
                    status.registered_models.to_string(),
                    status.resident_models.to_string(),
                    mib(status.memory_used_bytes),
                    mib(status.memory_budget_bytes),
                    status.evictions.to_string(),
                ]);
                if wide == Some(Output::Wide) {
                    for server in &status.servers {
                        rows.push(vec![
                            format!("  {}", server.name),
                            if server.ready { "ready" } else { "not ready" }.into(),
                            server.registered_models.to_string(),
                            server.resident_models.to_string(),
                            mib(server.memory_used_bytes),
                            mib(server.memory_budget_bytes),
                            server.evictions.to_string(),
                        ]);
                    }
                }
            }
            print!("{}", print::columns(&rows));
        }
    }
    Ok(())
}
