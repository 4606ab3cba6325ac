//! The cluster roles: `ferry operator` and `ferry router` (in a pod, or against a kubeconfig).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;

use crate::{TlsArgs, server};

#[derive(Args)]
pub struct OperatorArgs {
    /// The ferry image the predictor Deployments run.
    #[arg(long, default_value = concat!("ghcr.io/ferry-dev/ferry:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Extra node selector for every predictor pod, KEY=VALUE (repeatable).
    #[arg(long = "node-selector", value_name = "KEY=VALUE")]
    node_selector: Vec<String>,
    /// A node directory every predictor pod on a node shares as its model cache (hostPath;
    /// must be writable by UID 65532). Default: an emptyDir per pod, so each pod downloads.
    #[arg(long, env = "FERRY_MODEL_CACHE_HOST_PATH", value_name = "DIR")]
    model_cache_host_path: Option<String>,
    /// Address of `/healthz` and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:8081")]
    metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease (default: the pod's namespace from the service
    /// account, else `ferry-system`).
    #[arg(long)]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name and pid).
    #[arg(long)]
    identity: Option<String>,
    /// Serve the router's numbers as the `external.metrics.k8s.io` API here (TLS, for the
    /// apiserver's aggregation layer; `deploy/external-metrics.yaml` registers it), so an HPA
    /// scales on them (`autoscaling.engine: hpa` on concurrency, rps or queueDepth).
    #[arg(long)]
    external_metrics_addr: Option<SocketAddr>,
}

#[derive(Args)]
pub struct RouterArgs {
    /// Address to serve inference traffic on (REST and gRPC).
    #[arg(long, default_value = "0.0.0.0:8080")]
    addr: SocketAddr,
    #[command(flatten)]
    tls: TlsArgs,
    /// With TLS: plain HTTP too, on this address (e.g. for in-cluster clients).
    #[arg(long, value_name = "ADDR")]
    plain_addr: Option<SocketAddr>,
    /// Router replicas that share each rate limit: every replica keeps its own buckets, at
    /// this share of the limit (keep it equal to the Deployment's replicas).
    #[arg(long, env = "FERRY_ROUTER_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    replicas: u32,
    /// The bearer token that reads this router's own numbers while namespaces have API keys
    /// (the operator's collector sends the same one).
    #[arg(long, env = "FERRY_ROUTER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// In-flight slots (per router replica) that namespaces share fairly once two or more
    /// send; 0 (the default): first come, first served. In a cluster each namespace's pods
    /// have their own CPU; set this when tenants' replicas share nodes or a pool.
    #[arg(
        long,
        env = "FERRY_ROUTER_FAIR_SLOTS",
        default_value_t = 0,
        value_name = "N"
    )]
    fair_slots: usize,
    /// Requests one namespace may have waiting for its share (default: 64 per slot).
    #[arg(long, env = "FERRY_ROUTER_FAIR_QUEUE", value_name = "N")]
    fair_queue: Option<usize>,
}

pub fn node_selector(pairs: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    let mut selector = std::collections::BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--node-selector {pair:?}: write KEY=VALUE"))?;
        selector.insert(key.to_string(), value.to_string());
    }
    Ok(selector)
}

pub async fn cluster_router(args: RouterArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes credentials (in-cluster or kubeconfig)")?;
    let (routes, table) = tokio::sync::watch::channel(std::sync::Arc::new(Default::default()));
    let router = ferry_router::Router::new(
        table,
        ferry_router::RouterConfig {
            admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
            fair: ferry_router::FairConfig::from_flags(args.fair_slots, args.fair_queue),
            ..ferry_router::RouterConfig::default()
        },
    );
    // A request held for a service at zero stamps it: the operator's watch wakes at once.
    router.on_demand(ferry_operator::demand::waker(client.clone()));
    let tls = ferry_router::Tls::for_pairs(args.tls.pairs()?)?;
    let plain = match args.plain_addr {
        Some(addr) if tls.is_some() => Some(
            ferry_router::serve_threads(addr, router.clone())
                .with_context(|| format!("cannot listen on {addr} (--plain-addr)"))?,
        ),
        _ => None,
    };
    let secure = tls.is_some();
    let running = ferry_router::serve_threads_tls(args.addr, router, tls)
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    tracing::info!(addr = %running.addr, tls = secure, "ferry router: serving");
    tokio::select! {
        _ = ferry_operator::routes::feed(client, routes, args.replicas) => tracing::warn!("the watches ended"),
        _ = server::shutdown_signal() => {}
    }
    running.shutdown(std::time::Duration::from_secs(10)).await;
    if let Some(plain) = plain {
        plain.shutdown(std::time::Duration::from_secs(10)).await;
    }
    Ok(())
}

pub async fn operator(args: OperatorArgs) -> Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes credentials (in-cluster or kubeconfig)")?;
    let render = ferry_render::RenderOptions {
        image: args.image,
        node_selector: node_selector(&args.node_selector)?,
        model_cache_host_path: args.model_cache_host_path,
        // Servers export their spans where the operator is told to (none: no variable set).
        server_env: ferry_render::TRACE_ENV
            .iter()
            .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
            .collect(),
    };
    // Every replica collects the router pods' numbers (only while asked for them), so a
    // standby answers the External metrics API (and KEDA) as the leader does.
    let collector = std::sync::Arc::new(ferry_operator::collect::Collector::default());
    {
        let (collector, client) = (collector.clone(), client.clone());
        let routers = ferry_operator::collect::RouterPods::default();
        tokio::spawn(async move { collector.run(client, routers).await });
    }
    let metrics = std::sync::Arc::new(ferry_operator::probes::Metrics::default());
    let probes =
        ferry_operator::probes::serve(args.metrics_addr, metrics.clone(), collector.clone())
            .await
            .with_context(|| format!("cannot listen on {} (--metrics-addr)", args.metrics_addr))?;
    let identity = args
        .identity
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
    let lease_namespace = args
        .lease_namespace
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|ns| ns.trim().to_string())
        })
        .unwrap_or_else(|| "ferry-system".to_string());
    let election = ferry_operator::lease::LeaderElection::new(
        client.clone(),
        &lease_namespace,
        "ferry-operator",
        &identity,
    );
    if let Some(addr) = args.external_metrics_addr {
        let (client, collector) = (client.clone(), collector.clone());
        // Until the API is registered (its RBAC, the aggregation layer's CA), try again.
        tokio::spawn(async move {
            let mut first = true;
            loop {
                match ferry_operator::external_metrics::serve(
                    addr,
                    client.clone(),
                    collector.clone(),
                )
                .await
                {
                    Ok(bound) => {
                        tracing::info!(addr = %bound, "serving external.metrics.k8s.io");
                        break;
                    }
                    Err(e) if first => {
                        tracing::warn!(error = %e, "not serving external.metrics.k8s.io yet; trying again every 10 s");
                        first = false;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "not serving external.metrics.k8s.io yet")
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        });
    }
    tracing::info!(probes = %probes, %identity, lease = %format!("{lease_namespace}/ferry-operator"), "ferry operator: waiting for the leader lease");
    tokio::select! {
        _ = election.acquire() => {}
        _ = server::shutdown_signal() => return Ok(()),
    }
    metrics.leader.set(1);
    tracing::info!("ferry operator: leading; reconciling InferenceServices");
    // The External metrics API follows the leader: its Service names this replica.
    if let Some(addr) = args.external_metrics_addr {
        let addr = if addr.ip().is_unspecified() {
            let ip = std::env::var("POD_IP").ok().and_then(|ip| ip.parse().ok());
            std::net::SocketAddr::new(ip.unwrap_or(addr.ip()), addr.port())
        } else {
            addr
        };
        if let Err(e) =
            ferry_operator::external_metrics::advertise(&client, &lease_namespace, addr).await
        {
            tracing::warn!(error = %e, "cannot point the external metrics Service at this replica");
        }
    }
    let reporter = ferry_operator::Reporter {
        controller: "ferry-operator".to_string(),
        instance: Some(identity.clone()),
    };
    let lost = tokio::select! {
        _ = ferry_operator::run(ferry_operator::Context { client, render, metrics: metrics.clone(), reporter, collector }) => None,
        lost = election.hold() => Some(lost),
    };
    metrics.leader.set(0);
    match lost {
        // Another replica leads now: stop at once, a restart makes this one a candidate again.
        Some(lost) => anyhow::bail!("lost leadership: {lost}"),
        None => {
            election.release().await;
            Ok(())
        }
    }
}
