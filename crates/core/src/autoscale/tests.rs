//! Deterministic simulations: synthetic load curves against the autoscaler, with replicas
//! that take a second to become ready, sampled every half second as the executors do.

use super::*;
use ferry_api::{AutoscalingSpec, ModelSpec};

const TICK: f64 = 0.5;
/// Seconds a replica takes from being asked for to being ready.
const START: f64 = 1.0;

fn predictor(
    metric: ScaleMetric,
    target: u32,
    min: u32,
    max: u32,
    spec: AutoscalingSpec,
) -> PredictorSpec {
    PredictorSpec {
        model: ModelSpec {
            format: "onnx".into(),
            uri: "/m.onnx".into(),
            name: None,
            runtime_version: None,
            secret_name: None,
            format_version: None,
        },
        runtime: None,
        pool: None,
        min_replicas: Some(min),
        max_replicas: Some(max),
        resources: None,
        startup_timeout_seconds: None,
        scale_metric: Some(metric),
        canary_traffic_percent: None,
        scale_target: Some(target),
        autoscaling: Some(spec),
        node_selector: Default::default(),
        tolerations: Vec::new(),
        gpu_products: Vec::new(),
    }
}

fn spec(stable: u32, delay: u32, grace: u32) -> AutoscalingSpec {
    AutoscalingSpec {
        stable_window_seconds: Some(stable),
        scale_down_delay_seconds: Some(delay),
        scale_to_zero_grace_seconds: Some(grace),
        ..AutoscalingSpec::default()
    }
}

fn at(t: f64) -> Timestamp {
    Timestamp::from_millisecond(1_800_000_000_000 + (t * 1000.0) as i64).unwrap()
}

/// One simulated tick's outcome.
#[derive(Debug, Clone, Copy)]
struct Tick {
    t: f64,
    desired: u32,
    ready: u32,
    panic: bool,
}

/// Run `load(t)` = (clients with a request outstanding, arrivals per second) for `seconds`.
fn simulate(
    predictor: &PredictorSpec,
    seconds: f64,
    load: impl Fn(f64) -> (u64, f64),
) -> Vec<Tick> {
    let settings = Settings::of(predictor).expect("Ferry scales it");
    let mut scaler = Autoscaler::default();
    let mut desired = settings.min;
    // Replicas asked for, with the time each becomes ready.
    let mut replicas: Vec<f64> = vec![0.0; settings.min as usize];
    let mut arrivals = 0.0;
    let mut out = Vec::new();
    let mut t = 0.0;
    while t <= seconds {
        let ready = replicas.iter().filter(|r| **r <= t).count() as u32;
        let (clients, rate) = load(t);
        arrivals += rate * TICK;
        let sample = if ready == 0 {
            Load {
                in_flight: 0,
                held: clients,
                arrivals: arrivals as u64,
                gpu_percent: None,
            }
        } else {
            Load {
                in_flight: clients,
                held: 0,
                arrivals: arrivals as u64,
                gpu_percent: None,
            }
        };
        scaler.observe(at(t), sample);
        let decision = scaler.decide(&settings, ready, desired, at(t));
        desired = decision.desired;
        while replicas.len() < desired as usize {
            replicas.push(t + START);
        }
        replicas.truncate(desired as usize);
        out.push(Tick {
            t,
            desired,
            ready,
            panic: decision.panic,
        });
        t += TICK;
    }
    out
}

fn first(ticks: &[Tick], from: f64, what: impl Fn(&Tick) -> bool) -> Option<f64> {
    ticks
        .iter()
        .find(|k| k.t >= from && what(k))
        .map(|k| k.t - from)
}

fn decreases(ticks: &[Tick], from: f64) -> usize {
    ticks
        .windows(2)
        .filter(|w| w[0].t >= from && w[1].desired < w[0].desired)
        .count()
}

#[test]
fn a_tenfold_step_is_met_at_once_by_panic_and_capacity_serves_a_second_later() {
    let p = predictor(ScaleMetric::Concurrency, 2, 1, 20, spec(30, 30, 60));
    let ticks = simulate(&p, 90.0, |t| if t < 40.0 { (2, 20.0) } else { (20, 200.0) });
    // Steady at 1 before the step.
    assert!(
        ticks
            .iter()
            .filter(|k| k.t > 35.0 && k.t < 40.0)
            .all(|k| k.desired == 1)
    );
    // More replicas asked for in the first look after the step, the full size once the
    // panic window (3 s) holds the new level.
    let more = first(&ticks, 40.0, |k| k.desired >= 2).expect("scaled up");
    assert!(more <= TICK, "asked for more {more}s after the step");
    let asked = first(&ticks, 40.0, |k| k.desired >= 10).expect("scaled up");
    assert!(
        asked <= 3.0 + TICK,
        "asked for 10 replicas {asked}s after the step"
    );
    let serving = first(&ticks, 40.0, |k| k.ready >= 10).unwrap();
    assert!(
        serving <= 3.0 + START + TICK,
        "serving {serving}s after the step"
    );
    assert!(
        ticks.iter().any(|k| k.t >= 40.0 && k.panic),
        "a tenfold burst panics"
    );
    // Panic ends once a stable window passed without the condition; the size stays 10.
    let last = ticks.last().unwrap();
    assert!(!last.panic && last.desired == 10, "{last:?}");
}

#[test]
fn a_ramp_is_followed_within_the_window_and_never_above_max() {
    let p = predictor(ScaleMetric::Concurrency, 2, 1, 6, spec(6, 6, 60));
    // 0 → 20 clients over 60 s.
    let ticks = simulate(&p, 80.0, |t| (((t / 3.0).floor() as u64).min(20), 0.0));
    for k in &ticks {
        assert!(k.desired <= 6, "above max: {k:?}");
        // Never more than what the load asks for (plus one for rounding the window).
        let clients = ((k.t / 3.0).floor() as u32).min(20);
        assert!(
            k.desired <= (clients / 2 + 1).max(1),
            "ahead of the load: {k:?}"
        );
    }
    // Behind by at most the stable window.
    for k in ticks.iter().filter(|k| k.t >= 10.0) {
        let earlier = (((k.t - 6.0 - START) / 3.0).floor() as u32).min(20);
        assert!(k.desired >= (earlier / 2).min(6), "lagging: {k:?}");
    }
    assert_eq!(ticks.last().unwrap().desired, 6);
}

#[test]
fn a_sawtooth_does_not_flap_within_the_scale_down_delay() {
    let p = predictor(ScaleMetric::Concurrency, 2, 1, 10, spec(6, 20, 60));
    // 4 ↔ 12 clients every 5 s.
    let ticks = simulate(&p, 120.0, |t| {
        if ((t / 5.0) as u64).is_multiple_of(2) {
            (4, 0.0)
        } else {
            (12, 0.0)
        }
    });
    assert!(
        decreases(&ticks, 20.0) == 0,
        "the size went down inside the load's period: {:?}",
        ticks
            .iter()
            .filter(|k| k.t >= 20.0)
            .map(|k| k.desired)
            .collect::<Vec<_>>()
    );
    assert!(ticks.iter().filter(|k| k.t >= 20.0).all(|k| k.desired >= 6));
}

#[test]
fn steady_noise_keeps_one_size() {
    let p = predictor(ScaleMetric::Concurrency, 2, 1, 10, spec(10, 10, 60));
    // 7 ± 2 clients, deterministic pseudo-random.
    let noise = |t: f64| {
        let mut x = (t * 2.0) as u64 ^ 0x9E37_79B9_7F4A_7C15;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 31;
        (5 + x % 5, 0.0)
    };
    let ticks = simulate(&p, 120.0, noise);
    let sizes: Vec<u32> = ticks
        .iter()
        .filter(|k| k.t >= 15.0)
        .map(|k| k.desired)
        .collect();
    let changes = sizes.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        changes <= 1,
        "{changes} size changes on steady noise: {sizes:?}"
    );
    assert!(sizes.iter().all(|n| *n == 4), "{sizes:?}");
}

#[test]
fn scale_down_waits_for_the_delay() {
    let p = predictor(ScaleMetric::Concurrency, 2, 1, 10, spec(6, 20, 60));
    let ticks = simulate(&p, 80.0, |t| if t < 30.0 { (16, 0.0) } else { (0, 0.0) });
    assert!(ticks.iter().any(|k| k.t < 30.0 && k.desired == 8));
    let down = first(&ticks, 30.0, |k| k.desired < 8).expect("scaled down");
    assert!(
        down >= 20.0,
        "went down {down}s after the load stopped, before the 20 s delay"
    );
    let one = first(&ticks, 30.0, |k| k.desired == 1).expect("back to min");
    assert!(
        one <= 20.0 + 6.0 + TICK,
        "back to 1 only {one}s after the load stopped"
    );
}

#[test]
fn idle_goes_to_zero_after_the_grace_and_a_burst_wakes_it_at_once() {
    let p = predictor(ScaleMetric::Concurrency, 4, 0, 8, spec(6, 6, 10));
    let ticks = simulate(&p, 60.0, |t| if t < 40.0 { (0, 0.0) } else { (50, 0.0) });
    let zero = first(&ticks, 0.0, |k| k.desired == 0).expect("scaled to zero");
    assert!(
        (10.0..=10.0 + TICK).contains(&zero),
        "zero at {zero}s, grace 10 s"
    );
    assert!(
        ticks
            .iter()
            .filter(|k| k.t > zero && k.t < 40.0)
            .all(|k| k.desired == 0)
    );
    // 50 held requests: at once up to maxScaleUpRate × 1, then all of max.
    let woke = first(&ticks, 40.0, |k| k.desired >= 1).unwrap();
    assert_eq!(
        woke, 0.0,
        "the first held request asks for a replica in the same tick"
    );
    let full = first(&ticks, 40.0, |k| k.desired == 8).unwrap();
    assert!(full <= START + TICK, "all of max {full}s after the burst");
}

#[test]
fn held_requests_keep_a_replica_that_never_gets_ready() {
    let p = predictor(ScaleMetric::Concurrency, 4, 0, 4, spec(6, 6, 5));
    let settings = Settings::of(&p).unwrap();
    let mut scaler = Autoscaler::default();
    let mut desired = 0;
    for i in 0..120 {
        let t = f64::from(i) * TICK;
        // One request waits the whole minute: the replica stays Pending (no GPU node).
        scaler.observe(
            at(t),
            Load {
                in_flight: 0,
                held: 1,
                arrivals: 1,
                gpu_percent: None,
            },
        );
        let d = scaler.decide(&settings, 0, desired, at(t));
        desired = d.desired;
        assert_eq!(desired, 1, "at {t}s: {d:?}");
        assert!(d.message.contains("1 requests held"), "{}", d.message);
    }
}

#[test]
fn panic_never_scales_down_and_ends_a_stable_window_after_the_burst() {
    let p = predictor(ScaleMetric::Concurrency, 1, 1, 20, spec(10, 0, 60));
    // A short burst of 12 for 3 s, then 2.
    let ticks = simulate(&p, 40.0, |t| {
        if (15.0..18.0).contains(&t) {
            (12, 0.0)
        } else {
            (2, 0.0)
        }
    });
    let peak = ticks.iter().map(|k| k.desired).max().unwrap();
    assert!(peak >= 10, "{peak}");
    let panicking: Vec<&Tick> = ticks.iter().filter(|k| k.panic).collect();
    assert!(!panicking.is_empty());
    assert!(
        panicking.windows(2).all(|w| w[1].desired >= w[0].desired),
        "down while panicking"
    );
    // It ends a stable window (10 s) after the short window last asked for twice the ready
    // replicas: inside the burst.
    let end = panicking.last().unwrap().t;
    assert!(
        (15.0 + 10.0 - TICK..=17.5 + 10.0 + TICK).contains(&end),
        "panic ended at {end}s"
    );
    assert!(ticks.iter().filter(|k| k.t > end + 1.0).all(|k| !k.panic));
}

#[test]
fn rps_sizes_by_arrivals_and_no_numbers_holds() {
    let p = predictor(ScaleMetric::Rps, 10, 1, 20, spec(10, 10, 60));
    let ticks = simulate(&p, 40.0, |_| (3, 100.0));
    assert_eq!(ticks.last().unwrap().desired, 10);
    let settings = Settings::of(&p).unwrap();
    let mut scaler = Autoscaler::default();
    let d = scaler.decide(&settings, 3, 3, at(0.0));
    assert_eq!((d.desired, d.value), (3, None), "{d:?}");
}

#[test]
fn queue_depth_counts_what_waits_beyond_the_inference_threads() {
    let mut p = predictor(ScaleMetric::QueueDepth, 2, 1, 20, spec(5, 5, 60));
    p.resources = Some(ferry_api::Resources {
        requests: [("cpu".to_string(), "2".to_string())].into(),
        limits: Default::default(),
    });
    let settings = Settings::of(&p).unwrap();
    let mut scaler = Autoscaler::default();
    for i in 0..12 {
        // 2 ready replicas × 2 threads: 4 busy, 6 waiting → 3 replicas for a target of 2.
        scaler.observe(
            at(f64::from(i) * TICK),
            Load {
                in_flight: 10,
                held: 0,
                arrivals: 0,
                gpu_percent: None,
            },
        );
    }
    let d = scaler.decide(&settings, 2, 2, at(5.5));
    assert_eq!(d.value, Some(6.0));
    assert!(d.desired >= 3, "{d:?}");
}

#[test]
fn only_ferrys_engine_on_router_metrics_gets_settings() {
    let cpu = predictor(ScaleMetric::Cpu, 80, 1, 4, AutoscalingSpec::default());
    assert!(Settings::of(&cpu).is_none());
    let mut hpa = predictor(
        ScaleMetric::Concurrency,
        4,
        1,
        4,
        AutoscalingSpec::default(),
    );
    hpa.autoscaling.as_mut().unwrap().engine = Some(ferry_api::AutoscalingEngine::Hpa);
    assert!(Settings::of(&hpa).is_none());
    let ferry = predictor(
        ScaleMetric::Concurrency,
        4,
        1,
        4,
        AutoscalingSpec::default(),
    );
    assert_eq!(Settings::of(&ferry).unwrap().stable_window, 30.0);
}

#[test]
fn gpu_utilization_maps_like_an_hpa_and_holds_while_unavailable() {
    let p = predictor(ScaleMetric::GpuUtilization, 60, 1, 8, spec(4, 4, 60));
    let settings = Settings::of(&p).unwrap();
    // No replica reports a GPU: the size holds, and says why.
    let mut scaler = Autoscaler::default();
    for i in 0..10 {
        scaler.observe(
            at(f64::from(i) * TICK),
            Load {
                in_flight: 3,
                ..Load::default()
            },
        );
    }
    let d = scaler.decide(&settings, 3, 3, at(4.5));
    assert_eq!((d.desired, d.value), (3, None));
    assert!(
        d.message.contains("gpuUtilization is unavailable"),
        "{}",
        d.message
    );
    // 3 replicas at 90 % each (270 summed) for a target of 60 %: ceil(3 × 90 / 60) = 5.
    let mut scaler = Autoscaler::default();
    for i in 0..10 {
        let load = Load {
            gpu_percent: Some(270.0),
            ..Load::default()
        };
        scaler.observe(at(f64::from(i) * TICK), load);
    }
    let d = scaler.decide(&settings, 3, 3, at(4.5));
    assert_eq!((d.desired, d.value), (5, Some(270.0)), "{d:?}");
    // Two router replicas' numbers add up.
    let mut a = Load {
        gpu_percent: Some(90.0),
        ..Load::default()
    };
    a.merge(&Load {
        gpu_percent: Some(45.0),
        in_flight: 1,
        ..Load::default()
    });
    assert_eq!((a.gpu_percent, a.in_flight), (Some(135.0), 1));
}

#[test]
fn locally_ferrys_engine_stands_in_for_an_hpa_or_keda_on_the_routers_metrics() {
    let manifest = |metric: &str, engine: &str| {
        crate::testing::isvc(&format!(
            "apiVersion: ferry.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: iris}}\nspec:\n  predictor:\n    maxReplicas: 4\n    scaleMetric: {metric}\n    resources: {{requests: {{cpu: \"1\"}}}}\n    autoscaling: {{engine: {engine}, stableWindowSeconds: 9}}\n    model: {{format: onnx, uri: /m.onnx}}\n"
        ))
    };
    for engine in ["hpa", "keda"] {
        let mut isvc = manifest("concurrency", engine);
        assert!(Settings::of(&isvc.spec.predictor).is_none());
        local_stand_in(&mut isvc);
        let settings = Settings::of(&isvc.spec.predictor).expect("Ferry's engine locally");
        assert_eq!(settings.stable_window, 9.0, "the other settings are kept");
    }
    let mut cpu = manifest("cpu", "hpa");
    local_stand_in(&mut cpu);
    assert_eq!(
        cpu.spec.predictor.autoscaling_engine(),
        ferry_api::AutoscalingEngine::Hpa
    );
}
