//! Kubernetes objects are untrusted: arbitrary JSON read as a Service, an
//! EndpointSlice, and a Node, then turned into VIPs, must never panic: without a
//! `load_balancer_class`, and with one (class `c`), where status addresses outside the
//! pool are lost, some of them still waiting.
#![no_main]

use std::collections::HashMap;

use control::sources::kube::model::{compute, compute_waiting, lost, Objects};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(values) = serde_json::from_slice::<Vec<serde_json::Value>>(data) else {
        return;
    };
    let mut objs = Objects::default();
    for (i, v) in values.into_iter().enumerate() {
        let key = format!("ns/{i}");
        if let Ok(s) = serde_json::from_value::<Service>(v.clone()) {
            objs.services.insert(key.clone(), s);
        }
        if let Ok(s) = serde_json::from_value::<EndpointSlice>(v.clone()) {
            objs.slices.insert(key.clone(), s);
        }
        if let Ok(n) = serde_json::from_value::<Node>(v) {
            objs.nodes.insert(key, n);
        }
    }
    let pool = "address_pool = [\"198.51.100.0/30\", \"2001:db8::/126\"]\n";
    let cfg = |class: &str| {
        let text =
            format!("[dataplane]\nupstream_interface = \"eth0\"\n[kubernetes]\n{pool}{class}");
        control::config::parse(&text, std::path::Path::new("fuzz.toml"))
            .unwrap()
            .kubernetes
            .unwrap()
    };
    let _ = compute(&cfg(""), &objs, &mut HashMap::new());
    let classed = cfg("load_balancer_class = \"c\"\n");
    let _ = compute(&classed, &objs, &mut HashMap::new());
    // Every other lost address still waiting.
    let waiting = lost(&classed, &objs).into_iter().step_by(2).collect();
    let _ = compute_waiting(&classed, &objs, &mut HashMap::new(), &waiting);
});
