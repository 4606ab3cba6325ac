//! The cluster feed of the router: InferenceServices and their predictor Pods (podIP, Ready,
//! deletionTimestamp) watched through reflectors; on every change the route table is rebuilt by
//! the same `ferry_core::routes::build` local mode uses. EndpointSlices are not used: they refuse
//! loopback pod IPs on the test bed, and Pods carry everything the table needs.

use std::sync::Arc;

use ferry_api::{InferenceService, LABEL_SERVICE};
use ferry_core::routes::{Endpoint, RouteTable, ServiceEndpoints, build};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use crate::reconcile::pod_view;

fn table(isvcs: &Store<InferenceService>, pods: &Store<Pod>) -> RouteTable {
    let pods = pods.state();
    let services: Vec<ServiceEndpoints> = isvcs
        .state()
        .iter()
        .filter_map(|isvc| {
            let namespace = isvc.namespace()?;
            let name = isvc.name_any();
            let endpoints = pods
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(namespace.as_str()))
                .filter(|p| p.labels().get(LABEL_SERVICE) == Some(&name))
                .filter_map(|p| {
                    let (view, ip) = pod_view(p)?;
                    let ip: std::net::IpAddr = ip?.parse().ok()?;
                    Some(Endpoint {
                        replica: view,
                        http: (ip, ferry_core::render::HTTP_PORT).into(),
                        grpc: (ip, ferry_core::render::GRPC_PORT).into(),
                    })
                })
                .collect();
            Some(ServiceEndpoints {
                namespace,
                service: name,
                model: isvc.model_name(),
                endpoints,
            })
        })
        .collect();
    build(&services)
}

/// Keep `routes` current until the watches end.
pub async fn feed(client: Client, routes: watch::Sender<Arc<RouteTable>>) {
    let (isvc_store, isvc_writer) = reflector::store::<InferenceService>();
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let isvc_events = reflector::reflector(
        isvc_writer,
        watcher(
            Api::<InferenceService>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .map(|_| ());
    let predictor_pods = watcher::Config::default()
        .labels("app.kubernetes.io/managed-by=ferry,app.kubernetes.io/component=predictor");
    let pod_events =
        reflector::reflector(pod_writer, watcher(Api::<Pod>::all(client), predictor_pods))
            .default_backoff()
            .touched_objects()
            .map(|_| ());
    let mut events = std::pin::pin!(futures_util::stream::select(isvc_events, pod_events));
    while events.next().await.is_some() {
        let next = Arc::new(table(&isvc_store, &pod_store));
        routes.send_if_modified(|current| {
            if **current == *next {
                false
            } else {
                *current = next.clone();
                true
            }
        });
    }
}
