//! Which cached objects belong to which InferenceService.
//!
//! A reconcile reads the Deployments and Pods of one InferenceService; scanning every cached
//! object for its label made each reconcile cost O(objects in the cluster) (with a thousand
//! InferenceServices that was most of the operator's CPU). This index is kept from the same
//! watch events that fill the reflector caches: names by (namespace, InferenceService).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use ferry_api::LABEL_SERVICE;
use kube::Resource;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

type Key = (String, String);

/// Object names per (namespace, InferenceService name).
pub struct Owned {
    current: Mutex<HashMap<Key, BTreeSet<String>>>,
    /// A relist in progress: the index it builds replaces `current` when it is done.
    relist: Mutex<Option<HashMap<Key, BTreeSet<String>>>>,
    /// True once the first list is indexed. The reflector's store is ready a moment before
    /// this index sees the same `InitDone`: a reconcile in between read a new leader's cache
    /// as "no Deployments" and started a canary over.
    ready: tokio::sync::watch::Sender<bool>,
}

impl Default for Owned {
    fn default() -> Self {
        Self {
            current: Mutex::default(),
            relist: Mutex::default(),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

fn key_of<K: Resource>(object: &K) -> Option<(Key, String)> {
    let owner = object.labels().get(LABEL_SERVICE)?.clone();
    Some(((object.namespace()?, owner), object.name_any()))
}

impl Owned {
    /// Follow one watch event.
    pub fn observe<K: Resource>(&self, event: &Event<K>) {
        match event {
            Event::Apply(object) => {
                if let Some((key, name)) = key_of(object) {
                    let mut current = self.current.lock().expect("poisoned");
                    current.entry(key).or_default().insert(name);
                }
            }
            Event::Delete(object) => {
                if let Some((key, name)) = key_of(object) {
                    let mut current = self.current.lock().expect("poisoned");
                    if let Some(names) = current.get_mut(&key) {
                        names.remove(&name);
                        if names.is_empty() {
                            current.remove(&key);
                        }
                    }
                }
            }
            Event::Init => *self.relist.lock().expect("poisoned") = Some(HashMap::new()),
            Event::InitApply(object) => {
                if let Some((key, name)) = key_of(object)
                    && let Some(building) = self.relist.lock().expect("poisoned").as_mut()
                {
                    building.entry(key).or_default().insert(name);
                }
            }
            Event::InitDone => {
                if let Some(built) = self.relist.lock().expect("poisoned").take() {
                    *self.current.lock().expect("poisoned") = built;
                }
                self.ready.send_replace(true);
            }
        }
    }

    /// Wait until the first list is indexed.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.subscribe();
        // The sender lives as long as `self`: `wait_for` cannot see it dropped.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// The names of the objects of InferenceService `name` in `namespace`.
    pub fn names(&self, namespace: &str, name: &str) -> Vec<String> {
        self.current
            .lock()
            .expect("poisoned")
            .get(&(namespace.to_string(), name.to_string()))
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(namespace: &str, name: &str, owner: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = Some(name.into());
        pod.metadata.namespace = Some(namespace.into());
        if let Some(owner) = owner {
            pod.metadata.labels = Some([(LABEL_SERVICE.to_string(), owner.to_string())].into());
        }
        pod
    }

    #[test]
    fn follows_applies_deletes_and_relists() {
        let owned = Owned::default();
        owned.observe(&Event::Apply(pod("a", "iris-1", Some("iris"))));
        owned.observe(&Event::Apply(pod("a", "iris-2", Some("iris"))));
        owned.observe(&Event::Apply(pod("b", "iris-3", Some("iris"))));
        owned.observe(&Event::Apply(pod("a", "other", None)));
        assert_eq!(owned.names("a", "iris"), ["iris-1", "iris-2"]);
        assert_eq!(owned.names("b", "iris"), ["iris-3"]);
        owned.observe(&Event::Delete(pod("a", "iris-1", Some("iris"))));
        assert_eq!(owned.names("a", "iris"), ["iris-2"]);

        // A relist replaces the index once it is complete, not before.
        owned.observe(&Event::<Pod>::Init);
        owned.observe(&Event::InitApply(pod("a", "iris-4", Some("iris"))));
        assert_eq!(owned.names("a", "iris"), ["iris-2"]);
        assert!(
            !*owned.ready.borrow(),
            "not ready before the first list is indexed"
        );
        owned.observe(&Event::<Pod>::InitDone);
        assert!(*owned.ready.borrow());
        assert_eq!(owned.names("a", "iris"), ["iris-4"]);
        assert!(owned.names("b", "iris").is_empty());
    }
}
