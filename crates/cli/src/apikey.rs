//! `ferry apikey create | list | revoke`: API keys per namespace. A key is printed once, at
//! creation; only its hash is kept.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use ferry_api::RateLimitSpec;
use ferry_api::k8s_openapi::jiff;
use ferry_local::wire::{ApiKeyInfo, CreateApiKey, CreatedApiKey};
use std::path::PathBuf;

use crate::ctl::Common;

#[derive(Subcommand)]
pub enum ApiKeyCommand {
    /// Make a key for a namespace (printed once; a namespace with keys takes only requests
    /// that carry one of them).
    Create(CreateArgs),
    /// The namespace's keys: ID, name, rate, expiry (never the keys).
    List(ListArgs),
    /// Revoke a key by ID: the router refuses it once this returns.
    Revoke(RevokeArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    common: Common,
    /// A name to know the key by.
    #[arg(long, default_value = "")]
    name: String,
    /// The key's own rate limit: `50/s`, `600/m`, `1000/h`.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<RateLimitSpec>,
    /// When the key stops working: a duration from now (`90m`, `12h`, `30d`) or an RFC 3339
    /// time.
    #[arg(long, value_parser = parse_expiry)]
    expires: Option<String>,
    /// In the cluster this kubeconfig names (a Secret the router watches) instead of local mode.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    common: Common,
    /// The key's ID (first column of `ferry apikey list`).
    id: String,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

fn parse_rate(text: &str) -> Result<RateLimitSpec, String> {
    RateLimitSpec::parse(text)
}

/// `30d`, `12h`, `90m`, `45s` from now, or an RFC 3339 time; as RFC 3339.
pub fn parse_expiry(text: &str) -> Result<String, String> {
    if let Ok(at) = text.parse::<jiff::Timestamp>() {
        return Ok(at.to_string());
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let count: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: write a duration (90m, 12h, 30d) or an RFC 3339 time"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (s, m, h, d)")),
    };
    let at = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(
            count.saturating_mul(seconds),
        ))
        .map_err(|e| format!("{text:?}: {e}"))?;
    Ok(at.to_string())
}

pub async fn run(command: ApiKeyCommand) -> Result<()> {
    match command {
        ApiKeyCommand::Create(args) => {
            let request = CreateApiKey {
                name: args.name,
                rate: args.rate,
                expires: args.expires,
            };
            let namespace = &args.common.namespace;
            let created = match &args.kubeconfig {
                Some(kubeconfig) => {
                    ferry_local::apikeys::check(namespace, &request)?;
                    let (id, key) = ferry_local::apikeys::generate()?;
                    let record = ferry_api::ApiKeyRecord {
                        id,
                        namespace: namespace.clone(),
                        name: request.name,
                        hash: ferry_api::api_key_hash(&key),
                        rate: request.rate,
                        expires: request.expires,
                        created: jiff::Timestamp::now().to_string(),
                    };
                    crate::cluster::create_api_key(kubeconfig, &record).await?;
                    CreatedApiKey {
                        info: info(&record),
                        key,
                    }
                }
                None => {
                    args.common
                        .client()?
                        .create_api_key(namespace, &request)
                        .await?
                }
            };
            eprintln!(
                "API key {} for namespace {} (shown once: store it now)",
                created.info.id, created.info.namespace
            );
            println!("{}", created.key);
        }
        ApiKeyCommand::List(args) => {
            let namespace = &args.common.namespace;
            let keys = match &args.kubeconfig {
                Some(kubeconfig) => crate::cluster::api_keys(kubeconfig, namespace)
                    .await?
                    .iter()
                    .map(info)
                    .collect(),
                None => args.common.client()?.api_keys(namespace).await?,
            };
            print!("{}", table(&keys));
        }
        ApiKeyCommand::Revoke(args) => {
            if ferry_api::api_key_id(&args.id).is_some() {
                bail!("give the key's ID (ferry apikey list), not the key itself");
            }
            let namespace = &args.common.namespace;
            match &args.kubeconfig {
                Some(kubeconfig) => {
                    crate::cluster::revoke_api_key(kubeconfig, namespace, &args.id).await?
                }
                None => {
                    args.common
                        .client()?
                        .revoke_api_key(namespace, &args.id)
                        .await?;
                }
            }
            println!("apikey {}/{} revoked", args.common.namespace, args.id);
        }
    }
    Ok(())
}

fn info(record: &ferry_api::ApiKeyRecord) -> ApiKeyInfo {
    ApiKeyInfo {
        id: record.id.clone(),
        namespace: record.namespace.clone(),
        name: record.name.clone(),
        rate: record.rate,
        expires: record.expires.clone(),
        created: record.created.clone(),
    }
}

fn table(keys: &[ApiKeyInfo]) -> String {
    let mut rows = vec![
        ["ID", "NAME", "RATE", "EXPIRES", "AGE"]
            .map(String::from)
            .to_vec(),
    ];
    for key in keys {
        rows.push(vec![
            key.id.clone(),
            if key.name.is_empty() {
                "-".into()
            } else {
                key.name.clone()
            },
            key.rate.map_or("-".into(), |r| r.to_string()),
            key.expires.clone().unwrap_or_else(|| "never".into()),
            crate::print::age(&key.created),
        ]);
    }
    crate::print::columns(&rows)
}
