//! `ferry get isvc -w`: the table, then a line each time a service's row changes (its age
//! aside), as `kubectl get -w` prints; with `-o json`, the changed object, one per line.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use ferry_api::InferenceService;

use crate::ctl::{GetArgs, Output};
use crate::print;

/// A row without its last cell (the age, which changes every second).
fn without_age(line: &str) -> String {
    let mut cells: Vec<&str> = line.split_whitespace().collect();
    cells.pop();
    cells.join(" ")
}

pub async fn watch(args: &GetArgs, all_namespaces: bool) -> Result<()> {
    if matches!(args.output, Some(Output::Yaml)) {
        bail!("--watch prints a table or, with -o json, one JSON object per line");
    }
    let client = args.common.client()?;
    let wide = args.output == Some(Output::Wide);
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut header = false;
    loop {
        let items: Vec<InferenceService> = match &args.name {
            Some(name) => client
                .get(&args.common.namespace, name)
                .await
                .map(|i| vec![i])
                .unwrap_or_default(),
            None => {
                let namespace = (!all_namespaces).then_some(args.common.namespace.as_str());
                client.list(namespace).await?
            }
        };
        for isvc in &items {
            let key = (
                isvc.namespace_or_default(),
                isvc.metadata.name.clone().unwrap_or_default(),
            );
            let table = print::table(std::slice::from_ref(isvc), all_namespaces, wide);
            let mut lines = table.lines();
            let head = lines.next().unwrap_or_default().to_string();
            let row = lines.next().unwrap_or_default().to_string();
            let fingerprint = match args.output {
                Some(Output::Json) => {
                    serde_json::to_string(&(&isvc.metadata.generation, &isvc.status))?
                }
                _ => without_age(&row),
            };
            if seen.get(&key) == Some(&fingerprint) {
                continue;
            }
            seen.insert(key, fingerprint);
            match args.output {
                Some(Output::Json) => println!("{}", serde_json::to_string(isvc)?),
                _ => {
                    if !header {
                        println!("{head}");
                        header = true;
                    }
                    println!("{row}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_age_does_not_count_as_a_change() {
        assert_eq!(
            super::without_age("iris   http://x   True   iris-1   2/2   5s"),
            super::without_age("iris   http://x   True   iris-1   2/2   6s")
        );
    }
}
