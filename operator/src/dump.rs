//! A human-readable rendering of what NSDB holds, grouped by kind (`weft-operator nsdb-dump`).

use std::fmt::Write;

use nsdb::{AnyRecord, DeviceRef, Kind, PortKind, Rule, RuleAction};

fn action(a: &RuleAction) -> String {
    match a {
        RuleAction::Accept => "accept".into(),
        RuleAction::Drop => "drop".into(),
        RuleAction::Reject => "reject".into(),
        RuleAction::Jump(c) => format!("jump {c}"),
        RuleAction::Return => "return".into(),
        RuleAction::Continue => "continue".into(),
    }
}

fn rule(r: &Rule) -> String {
    let mut m = Vec::new();
    if let Some(p) = r.protocol {
        m.push(format!("{p:?}").to_lowercase());
    }
    if let Some(s) = r.src {
        m.push(format!("src {}{s}", if r.inv_src { "!" } else { "" }));
    }
    if let Some(d) = r.dst {
        m.push(format!("dst {}{d}", if r.inv_dst { "!" } else { "" }));
    }
    if let Some((a, b)) = r.src_ports {
        m.push(format!("sport {a}-{b}"));
    }
    if let Some((a, b)) = r.dst_ports {
        m.push(format!("dport {a}-{b}"));
    }
    if let Some(t) = r.icmp_type {
        m.push(format!("icmp type {t}"));
    }
    if let Some(c) = r.icmp_code {
        m.push(format!("code {c}"));
    }
    if let Some(ct) = r.ct_state {
        let flag =
            |n: &str, v: Option<bool>| v.map(|v| format!("{}{n}", if v { "+" } else { "-" }));
        let s: Vec<String> = [
            flag("new", ct.new),
            flag("est", ct.established),
            flag("rel", ct.related),
        ]
        .into_iter()
        .flatten()
        .collect();
        m.push(format!("ct {}", s.join(",")));
    }
    let what = if m.is_empty() {
        "any".to_owned()
    } else {
        m.join(" ")
    };
    format!("{what} -> {}", action(&r.action))
}

fn opt<T: std::fmt::Display>(label: &str, v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| format!(" {label}={v}"))
        .unwrap_or_default()
}

fn line(r: &AnyRecord) -> String {
    match r {
        AnyRecord::Host(h) => format!(
            "{}  underlay={} {:?}/{} mtu={}",
            h.id, h.underlay_ip, h.tunnel, h.tunnel_udp_port, h.mtu
        ),
        AnyRecord::Bridge(b) => format!(
            "{}  name={} key={:#08x}{}{}{} mtu={}{}{}{}{}",
            b.id,
            b.name,
            b.tunnel_key,
            opt("subnet", &b.subnet_v4),
            opt("subnet6", &b.subnet_v6),
            opt("gw", &b.gateway_v4),
            b.mtu,
            opt("vlan", &b.vlan),
            if b.excluded_ips.is_empty() {
                String::new()
            } else {
                format!(
                    " excluded={}",
                    b.excluded_ips
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            },
            opt("in", &b.inbound_chain),
            opt("out", &b.outbound_chain),
        ),
        AnyRecord::Router(x) => {
            let mut s = format!(
                "{}  name={} key={:#08x}{}{}",
                x.id,
                x.name,
                x.tunnel_key,
                opt("in", &x.inbound_chain),
                opt("out", &x.outbound_chain)
            );
            if let Some(n) = &x.snat {
                let addrs: Vec<String> = n.addresses.iter().map(ToString::to_string).collect();
                let _ = write!(
                    s,
                    "\n      snat via {} to {} ports {}-{}",
                    n.port,
                    addrs.join(","),
                    n.port_range.0,
                    n.port_range.1
                );
            }
            for d in &x.dnat {
                let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
                let _ = write!(
                    s,
                    "\n      dnat {}{}{} -> {}{}",
                    d.protocol
                        .map(|p| format!("{p:?} ").to_lowercase())
                        .unwrap_or_default(),
                    d.external_ip,
                    port(d.external_port),
                    d.internal_ip,
                    port(d.internal_port)
                );
            }
            s
        }
        AnyRecord::Port(p) => {
            let dev = match &p.device {
                DeviceRef::Bridge(b) => format!("bridge {b}"),
                DeviceRef::Router(r) => format!("router {r}"),
            };
            let kind = match &p.kind {
                PortKind::Exterior => "exterior".to_owned(),
                PortKind::Interior { peer } => format!("interior peer={peer}"),
                PortKind::Uplink => "uplink".to_owned(),
            };
            let addrs: Vec<String> = p.addresses.iter().map(ToString::to_string).collect();
            format!(
                "{}  on {dev} {kind} mac={} addr={} key={:#08x}{}{}{}",
                p.id,
                p.mac,
                addrs.join(","),
                p.tunnel_key,
                if p.admin_up { "" } else { " down" },
                opt("in", &p.inbound_chain),
                opt("out", &p.outbound_chain),
            )
        }
        AnyRecord::Route(r) => format!(
            "{}  router={} {}{} dev {} weight={}",
            r.id,
            r.router,
            r.dst,
            opt("via", &r.next_hop),
            r.port,
            r.weight
        ),
        AnyRecord::Chain(c) => {
            let mut s = format!(
                "{}  name={} default={}",
                c.id,
                c.name,
                action(&c.default_action)
            );
            for (i, r) in c.rules.iter().enumerate() {
                let _ = write!(s, "\n      {i}: {}", rule(r));
            }
            s
        }
        AnyRecord::LoadBalancer(lb) => {
            let mut s = format!("{}  name={}{}", lb.id, lb.name, opt("router", &lb.router));
            for v in &lb.vips {
                let members: Vec<String> = v
                    .members
                    .iter()
                    .map(|m| {
                        format!(
                            "{}:{} w{}{}",
                            m.ip,
                            m.port,
                            m.weight,
                            if m.healthy { "" } else { " down" }
                        )
                    })
                    .collect();
                let _ = write!(
                    s,
                    "\n      vip {} {}/{}{} -> {}",
                    v.ip,
                    format!("{:?}", v.protocol).to_lowercase(),
                    v.port,
                    if v.session_affinity { " client-ip" } else { "" },
                    if members.is_empty() {
                        "(no members)".to_owned()
                    } else {
                        members.join(", ")
                    }
                );
            }
            if let Some(h) = &lb.health_check {
                let _ = write!(
                    s,
                    "\n      health check {}{} every {} s, timeout {} s, rise {}, fall {}",
                    format!("{:?}", h.kind).to_lowercase(),
                    h.path
                        .as_deref()
                        .map(|p| format!(" {p}"))
                        .unwrap_or_default(),
                    h.interval_s,
                    h.timeout_s,
                    h.rise,
                    h.fall
                );
            }
            s
        }
        AnyRecord::PortBinding(b) => format!("{}  host={} vport={}", b.port, b.host, b.vport),
        AnyRecord::IpLease(l) => format!("{}/{}  owner={}", l.bridge, l.ip, l.owner),
        AnyRecord::TunnelKey(k) => format!("{:#08x}  owner={}", k.key, k.owner),
        AnyRecord::MemberHealth(h) => format!(
            "{} {}  {} (probed from {})",
            h.lb,
            h.member,
            if h.healthy { "up" } else { "down" },
            h.host
        ),
    }
}

/// Renders records grouped by kind, in NSDB's kind order, each group sorted by key.
pub fn render(revision: i64, records: &[(AnyRecord, i64)]) -> String {
    let mut out = format!("NSDB at revision {revision}: {} records\n", records.len());
    for kind in Kind::ALL {
        let mut of_kind: Vec<&(AnyRecord, i64)> =
            records.iter().filter(|(r, _)| r.kind() == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        of_kind.sort_by_key(|(r, _)| r.key());
        let _ = writeln!(out, "\n{kind} ({})", of_kind.len());
        for (r, version) in of_kind {
            let _ = writeln!(out, "  {}  @{version}", line(r));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{CrKind, ObjectKey};

    #[test]
    fn groups_by_kind_and_shows_the_facts() {
        let inv = crate::fixtures::topology();
        let mut records = Vec::new();
        for key in inv.keys() {
            for r in crate::translate(&key, &inv).unwrap().records {
                records.push((r, 7));
            }
        }
        let text = render(9, &records);
        assert!(text.starts_with("NSDB at revision 9:"), "{text}");
        let b = text.find("\nbridges (2)").expect(&text);
        let r = text.find("\nrouters (1)").expect(&text);
        let c = text.find("\nchains (").expect(&text);
        assert!(b < r && r < c, "{text}");
        assert!(text.contains("vbr:red  name=red"), "{text}");
        assert!(
            text.contains("subnet=10.2.0.0/24 subnet6=fd00:2::/64 gw=10.2.0.254 mtu=1400 vlan=7"),
            "{text}"
        );
        assert!(
            text.contains("192.168.0.0/16 via=10.1.0.10 dev vrt:edge:port:blue weight=2"),
            "{text}"
        );
        assert!(
            text.contains("tcp src !10.0.0.0/8 dport 80-443 -> accept"),
            "{text}"
        );
        assert!(
            text.contains("vip 10.96.0.10 tcp/80 client-ip -> 10.1.0.5:8080 w1"),
            "{text}"
        );
        assert!(
            text.contains("snat via vrt:edge:uplink to 203.0.113.2 ports 1024-65535"),
            "{text}"
        );
        let _ = ObjectKey::new(CrKind::VirtualBridge, "x");
    }
}
