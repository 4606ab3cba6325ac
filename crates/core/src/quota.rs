//! ResourceQuotas as local mode enforces them (a cluster's API server does it there): what a
//! namespace uses, whether an apply fits (refused with the quota's name, the resource, used /
//! asked / hard, as Kubernetes words it), and how many more replicas fit (the room a rollout's
//! surge and an autoscaler's scale-up are held to, in both modes: a cluster's from the quotas'
//! status).

use std::collections::BTreeMap;

use ferry_api::InferenceService;
use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What replicas and services take, per quota resource name (`pods`, `requests.cpu`, ...), in
/// base units (cores, bytes, devices, counts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage(pub BTreeMap<String, f64>);

const GPU: &str = "nvidia.com/gpu";

impl Usage {
    /// `replicas` replicas of `isvc`, and the service itself.
    pub fn of(isvc: &InferenceService, replicas: u32) -> Usage {
        let mut usage = Usage::replica(isvc).times(replicas);
        usage.add("count/inferenceservices.ferry.dev", 1.0);
        usage
    }

    /// One replica of `isvc`: a pod and its resources (a request defaults to its limit, as in
    /// Kubernetes).
    pub fn replica(isvc: &InferenceService) -> Usage {
        let mut usage = Usage::default();
        usage.add("pods", 1.0);
        usage.add("count/pods", 1.0);
        let resources = isvc.spec.predictor.resources.clone().unwrap_or_default();
        for resource in ["cpu", "memory", GPU] {
            let limit = resources
                .limits
                .get(resource)
                .and_then(|q| ferry_api::quantity::parse(q));
            let request = resources
                .requests
                .get(resource)
                .and_then(|q| ferry_api::quantity::parse(q))
                .or(limit);
            if let Some(request) = request {
                usage.add(&format!("requests.{resource}"), request);
                if resource != GPU {
                    usage.add(resource, request);
                }
            }
            if let Some(limit) = limit {
                usage.add(&format!("limits.{resource}"), limit);
            }
        }
        usage
    }

    fn add(&mut self, resource: &str, amount: f64) {
        *self.0.entry(resource.to_string()).or_default() += amount;
    }

    /// Each amount × `n`.
    pub fn times(mut self, n: u32) -> Usage {
        for amount in self.0.values_mut() {
            *amount *= f64::from(n);
        }
        self
    }

    /// The sum of both.
    pub fn plus(mut self, other: &Usage) -> Usage {
        for (resource, amount) in &other.0 {
            self.add(resource, *amount);
        }
        self
    }

    fn get(&self, resource: &str) -> f64 {
        self.0.get(resource).copied().unwrap_or(0.0)
    }
}

/// An apply or a replica a quota does not allow.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "exceeded quota: {quota}, requested: {resource}={}, used: {resource}={}, limited: {resource}={}",
    show(resource, *asked),
    show(resource, *used),
    show(resource, *hard)
)]
pub struct Exceeded {
    pub quota: String,
    pub resource: String,
    pub used: f64,
    pub asked: f64,
    pub hard: f64,
}

/// A quota tracks a resource the replicas do not declare (Kubernetes refuses such pods too).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{service}: must specify {resource} in spec.predictor.resources (ResourceQuota {quota} limits it)"
)]
pub struct Undeclared {
    pub quota: String,
    pub service: String,
    pub resource: String,
}

/// Why an apply does not fit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuotaError {
    #[error(transparent)]
    Exceeded(#[from] Exceeded),
    #[error(transparent)]
    Undeclared(#[from] Undeclared),
}

fn hard(quota: &ResourceQuota) -> impl Iterator<Item = (&str, f64)> {
    quota
        .spec
        .iter()
        .flat_map(|s| s.hard.iter().flatten())
        .filter_map(|(resource, amount)| {
            Some((resource.as_str(), ferry_api::quantity::parse(&amount.0)?))
        })
}

/// Whether `asked` (the services of an apply at their replicas) fits beside `used` (the
/// namespace's other services) under every quota; `services` are the applied ones, which must
/// declare what a quota tracks.
pub fn check(
    quotas: &[ResourceQuota],
    used: &Usage,
    asked: &Usage,
    services: &[&InferenceService],
) -> Result<(), QuotaError> {
    for quota in quotas {
        let name = quota.metadata.name.clone().unwrap_or_default();
        for (resource, limit) in hard(quota) {
            if resource.starts_with("requests.")
                || resource.starts_with("limits.")
                || resource == "cpu"
                || resource == "memory"
            {
                for isvc in services {
                    if Usage::replica(isvc).get(resource) == 0.0
                        && isvc.spec.predictor.replicas() > 0
                    {
                        return Err(Undeclared {
                            quota: name.clone(),
                            service: isvc.metadata.name.clone().unwrap_or_default(),
                            resource: resource.to_string(),
                        }
                        .into());
                    }
                }
            }
            let (now, more) = (used.get(resource), asked.get(resource));
            if now + more > limit + 1e-9 {
                return Err(Exceeded {
                    quota: name.clone(),
                    resource: resource.to_string(),
                    used: now,
                    asked: more,
                    hard: limit,
                }
                .into());
            }
        }
    }
    Ok(())
}

/// How many more replicas like `one` fit beside `used`, and the quota that sets the number
/// (the tightest); `None` when no quota limits what a replica takes.
pub fn room(quotas: &[ResourceQuota], used: &Usage, one: &Usage) -> Option<(String, u32)> {
    let limits = quotas.iter().map(|q| {
        let hard = hard(q).map(|(r, n)| (r.to_string(), n)).collect();
        (
            q.metadata.name.clone().unwrap_or_default(),
            hard,
            used.clone(),
        )
    });
    tightest(limits, one)
}

/// As [`room`] for a cluster's quotas, each read as the API server enforces it: its
/// `status.hard` and `status.used` (every pod of the namespace, Ferry's or not, those still
/// terminating too). A quota the controller has not filled in yet, or one with scopes (which
/// pods it counts depends on them), is left out: the API server still has the last word.
pub fn room_in_cluster(quotas: &[ResourceQuota], one: &Usage) -> Option<(String, u32)> {
    let unscoped = |q: &&ResourceQuota| {
        q.spec.as_ref().is_none_or(|s| {
            s.scopes.as_ref().is_none_or(Vec::is_empty) && s.scope_selector.is_none()
        })
    };
    let limits = quotas.iter().filter(unscoped).filter_map(|q| {
        let status = q.status.as_ref()?;
        let hard = amounts(status.hard.as_ref()?).collect();
        let used = Usage(amounts(status.used.as_ref()?).collect());
        Some((q.metadata.name.clone().unwrap_or_default(), hard, used))
    });
    tightest(limits, one)
}

fn amounts(map: &BTreeMap<String, Quantity>) -> impl Iterator<Item = (String, f64)> + '_ {
    map.iter().filter_map(|(resource, amount)| {
        Some((resource.clone(), ferry_api::quantity::parse(&amount.0)?))
    })
}

/// The tightest of `(quota, hard amounts, used)`: how many more replicas like `one` fit.
fn tightest(
    quotas: impl Iterator<Item = (String, Vec<(String, f64)>, Usage)>,
    one: &Usage,
) -> Option<(String, u32)> {
    let mut tightest: Option<(String, u32)> = None;
    for (name, hard, used) in quotas {
        for (resource, limit) in hard {
            let each = one.get(&resource);
            if each <= 0.0 {
                continue;
            }
            let fits = ((limit - used.get(&resource)) / each + 1e-9)
                .floor()
                .max(0.0) as u32;
            if tightest.as_ref().is_none_or(|(_, n)| fits < *n) {
                tightest = Some((name.clone(), fits));
            }
        }
    }
    tightest
}

/// `used / hard` per resource of `quota`, as `ferry get quota` shows it.
pub fn table(quota: &ResourceQuota, used: &Usage) -> Vec<(String, String, String)> {
    hard(quota)
        .map(|(resource, limit)| {
            (
                resource.to_string(),
                show(resource, used.get(resource)),
                show(resource, limit),
            )
        })
        .collect()
}

/// An amount as Kubernetes writes it: cores as `1500m`, bytes in `Mi`/`Gi` when whole, counts.
pub fn show(resource: &str, amount: f64) -> String {
    if resource.ends_with("cpu") {
        let milli = (amount * 1000.0).round();
        if milli % 1000.0 == 0.0 {
            format!("{}", milli / 1000.0)
        } else {
            format!("{milli}m")
        }
    } else if resource.ends_with("memory") {
        let gi = 1024.0 * 1024.0 * 1024.0;
        let mi = 1024.0 * 1024.0;
        if amount >= gi && amount % gi == 0.0 {
            format!("{}Gi", amount / gi)
        } else if amount % mi == 0.0 && amount > 0.0 {
            format!("{}Mi", amount / mi)
        } else {
            format!("{amount}")
        }
    } else {
        format!("{amount}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(hard: &[(&str, &str)]) -> ResourceQuota {
        let yaml = format!(
            "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: team}}\nspec:\n  hard:\n{}",
            hard.iter()
                .map(|(k, v)| format!("    {k}: \"{v}\"\n"))
                .collect::<String>()
        );
        ferry_api::parse_local_manifests(&yaml, "a")
            .unwrap()
            .quotas
            .remove(0)
    }

    fn isvc(name: &str, replicas: u32, cpu: &str) -> InferenceService {
        let yaml = format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: {name}}}\nspec:\n  predictor:\n    minReplicas: {replicas}\n    model: {{format: onnx, uri: /m.onnx}}\n    resources: {{requests: {{cpu: \"{cpu}\", memory: 256Mi}}}}\n"
        );
        ferry_api::parse_local_manifests(&yaml, "a")
            .unwrap()
            .services
            .remove(0)
            .isvc
    }

    #[test]
    fn an_apply_over_a_quota_names_it_with_used_asked_hard() {
        let quotas = [quota(&[("requests.cpu", "2"), ("pods", "4")])];
        let running = isvc("one", 2, "500m");
        let used = Usage::of(&running, 2);
        let next = isvc("two", 2, "600m");
        let error = check(&quotas, &used, &Usage::of(&next, 2), &[&next]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "exceeded quota: team, requested: requests.cpu=1200m, used: requests.cpu=1, limited: requests.cpu=2"
        );
        let small = isvc("two", 1, "500m");
        assert!(check(&quotas, &used, &Usage::of(&small, 1), &[&small]).is_ok());
        let counted = [quota(&[("count/inferenceservices.ferry.dev", "1")])];
        let error = check(&counted, &used, &Usage::of(&small, 1), &[&small]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("count/inferenceservices.ferry.dev=1"),
            "{error}"
        );
        let memory = [quota(&[("limits.memory", "1Gi")])];
        let error =
            check(&memory, &Usage::default(), &Usage::of(&small, 1), &[&small]).unwrap_err();
        assert!(
            error.to_string().contains("must specify limits.memory"),
            "{error}"
        );
    }

    #[test]
    fn room_is_what_the_tightest_quota_leaves() {
        let quotas = [quota(&[("pods", "3")]), quota(&[("requests.cpu", "4")])];
        let service = isvc("one", 2, "1");
        let used = Usage::of(&service, 2);
        assert_eq!(
            room(&quotas, &used, &Usage::replica(&service)),
            Some(("team".into(), 1))
        );
        assert_eq!(room(&[], &used, &Usage::replica(&service)), None);
        assert_eq!(
            show("requests.memory", 3.0 * 1024.0 * 1024.0 * 1024.0),
            "3Gi"
        );
        assert_eq!(show("requests.cpu", 1.5), "1500m");
    }

    #[test]
    fn a_clusters_room_is_read_from_each_quotas_status() {
        let with_status = |name: &str, hard: &[(&str, &str)], used: &[(&str, &str)]| {
            let amounts = |pairs: &[(&str, &str)]| {
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect::<BTreeMap<_, _>>()
            };
            let mut q = quota(hard);
            q.metadata.name = Some(name.into());
            q.status = Some(k8s_openapi::api::core::v1::ResourceQuotaStatus {
                hard: Some(amounts(hard)),
                used: Some(amounts(used)),
            });
            q
        };
        let service = isvc("one", 2, "500m");
        let one = Usage::replica(&service);
        // Pods of the namespace that are not Ferry's count too: 3 of 4 pods leave 1.
        let pods = with_status("pods", &[("pods", "4")], &[("pods", "3")]);
        let cpu = with_status("cpu", &[("requests.cpu", "2")], &[("requests.cpu", "500m")]);
        assert_eq!(
            room_in_cluster(&[cpu.clone(), pods.clone()], &one),
            Some(("pods".into(), 1))
        );
        let full = with_status("full", &[("pods", "2")], &[("pods", "3")]);
        assert_eq!(
            room_in_cluster(&[cpu.clone(), full], &one),
            Some(("full".into(), 0))
        );
        // Not filled in yet, or scoped: left to the API server.
        let mut fresh = pods.clone();
        fresh.status = None;
        let mut scoped = with_status("scoped", &[("pods", "1")], &[("pods", "1")]);
        scoped.spec.as_mut().unwrap().scopes = Some(vec!["BestEffort".into()]);
        assert_eq!(room_in_cluster(&[fresh, scoped], &one), None);
    }
}
