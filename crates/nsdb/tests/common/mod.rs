//! Shared fixtures for the NSDB integration tests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use nsdb::*;

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "nsdb=info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn bridge(id: &str, subnet: &str, gateway: &str) -> Bridge {
    Bridge {
        id: id.into(),
        name: id.into(),
        tunnel_key: 1,
        subnet_v4: Some(subnet.parse().unwrap()),
        subnet_v6: Some("fd00:1::/112".parse().unwrap()),
        gateway_v4: Some(gateway.parse().unwrap()),
        mtu: 1450,
        vlan: None,
        excluded_ips: vec![],
        inbound_chain: None,
        outbound_chain: None,
    }
}

pub fn port(id: &str, n: u32) -> Port {
    Port {
        id: id.into(),
        device: DeviceRef::Bridge("b1".into()),
        kind: PortKind::Exterior,
        mac: MacAddr::local_from_name(id),
        addresses: vec![
            format!("10.0.{}.{}/32", n / 250, n % 250 + 2)
                .parse()
                .unwrap(),
        ],
        tunnel_key: n,
        inbound_chain: None,
        outbound_chain: None,
        admin_up: true,
        labels: BTreeMap::from([("n".to_owned(), n.to_string())]),
    }
}
