//! Property tests of the wire codec and the text form: decoding arbitrary bytes never panics
//! (it returns a value or an error), and encode -> decode and print -> parse give back any
//! valid key, mask and action list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use odp::action::{Ct, Nat, NatKind, SetKey, Userspace};
use odp::key::*;
use odp::msg::{self, FlowPut};
use odp::{Action, Flow, decode_actions, decode_key, encode_actions, encode_key, parse_flow};
use proptest::prelude::*;

fn ip4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}
fn ip6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}
fn mac() -> impl Strategy<Value = [u8; 6]> {
    any::<[u8; 6]>()
}
fn raw(kinds: std::ops::RangeInclusive<u16>) -> impl Strategy<Value = RawAttr> {
    (kinds, prop::collection::vec(any::<u8>(), 0..24))
        .prop_map(|(kind, data)| RawAttr { kind, data })
}

fn tunnel() -> impl Strategy<Value = TunnelKey> {
    (
        (
            any::<Option<u64>>(),
            prop::option::of(ip4()),
            prop::option::of(ip4()),
        ),
        (prop::option::of(ip6()), prop::option::of(ip6())),
        (
            any::<Option<u8>>(),
            any::<Option<u8>>(),
            any::<(bool, bool, bool)>(),
        ),
        (any::<Option<u16>>(), any::<Option<u16>>()),
        prop::option::of(
            (0usize..=63).prop_flat_map(|n| prop::collection::vec(any::<u8>(), n * 4)),
        ),
        prop::collection::vec(raw(16..=1000), 0..2),
    )
        .prop_map(
            |((id, s4, d4), (s6, d6), (tos, ttl, (df, csum, oam)), (ps, pd), g, other)| TunnelKey {
                tun_id: id,
                ipv4_src: s4,
                ipv4_dst: d4,
                ipv6_src: s6,
                ipv6_dst: d6,
                tos,
                ttl,
                df,
                csum,
                oam,
                tp_src: ps,
                tp_dst: pd,
                geneve: g.map(|b| Box::new(GeneveOpts::new(&b).unwrap())),
                other,
            },
        )
}

fn ports() -> impl Strategy<Value = KeyPorts> {
    any::<(u16, u16)>().prop_map(|(src, dst)| KeyPorts { src, dst })
}
fn icmp() -> impl Strategy<Value = KeyIcmp> {
    any::<(u8, u8)>().prop_map(|(icmp_type, code)| KeyIcmp { icmp_type, code })
}
fn ipv4k() -> impl Strategy<Value = KeyIpv4> {
    (ip4(), ip4(), any::<[u8; 4]>()).prop_map(|(src, dst, b)| KeyIpv4 {
        src,
        dst,
        proto: b[0],
        tos: b[1],
        ttl: b[2],
        frag: b[3],
    })
}
fn ipv6k() -> impl Strategy<Value = KeyIpv6> {
    (ip6(), ip6(), any::<u32>(), any::<[u8; 4]>()).prop_map(|(src, dst, label, b)| KeyIpv6 {
        src,
        dst,
        label,
        proto: b[0],
        tclass: b[1],
        hlimit: b[2],
        frag: b[3],
    })
}
fn eth() -> impl Strategy<Value = KeyEthernet> {
    (mac(), mac()).prop_map(|(src, dst)| KeyEthernet { src, dst })
}

fn inner_key() -> impl Strategy<Value = FlowKey> {
    (
        any::<Option<u16>>(),
        prop::option::of(ipv4k()),
        prop::option::of(ports()),
    )
        .prop_map(|(eth_type, ipv4, udp)| FlowKey {
            eth_type,
            ipv4,
            udp,
            ..FlowKey::default()
        })
}

fn flow_key() -> impl Strategy<Value = FlowKey> {
    (
        (
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            prop::option::of(tunnel()),
        ),
        (
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<Option<u16>>(),
        ),
        (
            any::<Option<u32>>(),
            any::<Option<u128>>(),
            prop::option::of((ip4(), ip4(), any::<(u16, u16, u8)>())),
            prop::option::of((ip6(), ip6(), any::<(u16, u16, u8)>())),
        ),
        (
            prop::option::of(eth()),
            any::<Option<u16>>(),
            any::<Option<u16>>(),
            prop::option::of(inner_key()),
        ),
        (
            prop::option::of(ipv4k()),
            prop::option::of(ipv6k()),
            prop::option::of((ip4(), ip4(), any::<u16>(), mac(), mac())),
        ),
        (
            prop::option::of(ports()),
            any::<Option<u16>>(),
            prop::option::of(ports()),
            prop::option::of(ports()),
        ),
        (
            prop::option::of(icmp()),
            prop::option::of(icmp()),
            prop::option::of((ip6(), mac(), mac())),
            any::<Option<u16>>(),
        ),
        // 32 is OVS_KEY_ATTR_IPV6_EXTHDRS, which odp models.
        prop::collection::vec(raw(33..=0x3fff), 0..3),
    )
        .prop_map(|(a, b, c, d, e, f, g, other)| FlowKey {
            recirc_id: a.0,
            dp_hash: a.1,
            priority: a.2,
            tunnel: a.3,
            in_port: b.0,
            skb_mark: b.1,
            ct_state: b.2,
            ct_zone: b.3,
            ct_mark: c.0,
            ct_label: c.1,
            ct_tuple4: c.2.map(|(src, dst, (sp, dp, proto))| CtTupleIpv4 {
                src,
                dst,
                src_port: sp,
                dst_port: dp,
                proto,
            }),
            ct_tuple6: c.3.map(|(src, dst, (sp, dp, proto))| CtTupleIpv6 {
                src,
                dst,
                src_port: sp,
                dst_port: dp,
                proto,
            }),
            eth: d.0,
            eth_type: d.1,
            vlan: d.2,
            encap: d.3.map(Box::new),
            ipv4: e.0,
            ipv6: e.1,
            arp: e.2.map(|(sip, tip, op, sha, tha)| KeyArp {
                sip,
                tip,
                op,
                sha,
                tha,
            }),
            tcp: f.0,
            tcp_flags: f.1,
            udp: f.2,
            sctp: f.3,
            icmp: g.0,
            icmpv6: g.1,
            nd: g.2.map(|(target, sll, tll)| KeyNd { target, sll, tll }),
            ipv6_exthdrs: g.3,
            other,
        })
}

fn set_key() -> impl Strategy<Value = SetKey> {
    prop_oneof![
        any::<u32>().prop_map(SetKey::Priority),
        any::<u32>().prop_map(SetKey::SkbMark),
        eth().prop_map(SetKey::Ethernet),
        ipv4k().prop_map(SetKey::Ipv4),
        ipv6k().prop_map(SetKey::Ipv6),
        ports().prop_map(SetKey::Tcp),
        ports().prop_map(SetKey::Udp),
        ports().prop_map(SetKey::Sctp),
        tunnel().prop_map(SetKey::Tunnel),
        raw(29..=1000).prop_map(SetKey::Other),
    ]
}

fn same_kind_mask(k: &SetKey) -> BoxedStrategy<SetKey> {
    match k {
        SetKey::Priority(_) => any::<u32>().prop_map(SetKey::Priority).boxed(),
        SetKey::SkbMark(_) => any::<u32>().prop_map(SetKey::SkbMark).boxed(),
        SetKey::Ethernet(_) => eth().prop_map(SetKey::Ethernet).boxed(),
        SetKey::Ipv4(_) => ipv4k().prop_map(SetKey::Ipv4).boxed(),
        SetKey::Ipv6(_) => ipv6k().prop_map(SetKey::Ipv6).boxed(),
        SetKey::Tcp(_) => ports().prop_map(SetKey::Tcp).boxed(),
        SetKey::Udp(_) => ports().prop_map(SetKey::Udp).boxed(),
        SetKey::Sctp(_) => ports().prop_map(SetKey::Sctp).boxed(),
        SetKey::Other(r) => {
            let (kind, n) = (r.kind, r.data.len());
            prop::collection::vec(any::<u8>(), n)
                .prop_map(move |data| SetKey::Other(RawAttr { kind, data }))
                .boxed()
        }
        _ => Just(k.clone()).boxed(),
    }
}

fn ip_pair() -> impl Strategy<Value = (Option<IpAddr>, Option<IpAddr>)> {
    prop_oneof![
        Just((None, None)),
        (ip4(), prop::option::of(ip4()))
            .prop_map(|(a, b)| (Some(IpAddr::V4(a)), b.map(IpAddr::V4))),
        (ip6(), prop::option::of(ip6()))
            .prop_map(|(a, b)| (Some(IpAddr::V6(a)), b.map(IpAddr::V6))),
    ]
}

fn ct() -> impl Strategy<Value = Ct> {
    (
        any::<(bool, bool)>(),
        any::<Option<u16>>(),
        any::<Option<(u32, u32)>>(),
        any::<Option<(u128, u128)>>(),
        prop::option::of("[a-z]{1,15}"),
        prop::option::of("[a-z0-9_]{1,31}"),
        prop::option::of((
            prop::option::of(prop_oneof![Just(NatKind::Src), Just(NatKind::Dst)]),
            ip_pair(),
            any::<(Option<u16>, Option<u16>, bool, bool, bool)>(),
        )),
        any::<Option<u32>>(),
        prop::collection::vec(raw(10..=1000), 0..2),
    )
        .prop_map(
            |((commit, force), zone, mark, labels, helper, timeout, nat, ev, other)| Ct {
                commit,
                force_commit: force,
                zone,
                mark,
                labels: labels.map(Box::new),
                helper,
                timeout,
                nat: nat.map(
                    |(kind, (ip_min, ip_max), (pmin, pmax, persistent, hash, random))| Nat {
                        kind,
                        ip_min,
                        ip_max,
                        proto_min: pmin,
                        proto_max: pmax,
                        persistent,
                        hash,
                        random,
                    },
                ),
                eventmask: ev,
                other,
            },
        )
}

fn action() -> impl Strategy<Value = Action> {
    let leaf = prop_oneof![
        any::<u32>().prop_map(Action::Output),
        (
            any::<u32>(),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
            any::<Option<u32>>(),
            any::<bool>()
        )
            .prop_map(
                |(pid, userdata, egress_tun_port, actions)| Action::Userspace(Userspace {
                    pid,
                    userdata,
                    egress_tun_port,
                    actions
                })
            ),
        set_key().prop_map(Action::Set),
        set_key()
            .prop_filter("no masked tunnel set", |k| !matches!(k, SetKey::Tunnel(_)))
            .prop_flat_map(|k| {
                let m = same_kind_mask(&k);
                (Just(k), m)
            })
            .prop_map(|(k, m)| Action::SetMasked(k, m)),
        any::<(u16, u16)>().prop_map(|(tpid, tci)| Action::PushVlan { tpid, tci }),
        Just(Action::PopVlan),
        any::<u32>().prop_map(Action::Recirc),
        any::<(u32, u32)>().prop_map(|(alg, basis)| Action::Hash { alg, basis }),
        ct().prop_map(Action::Ct),
        Just(Action::CtClear),
        any::<u32>().prop_map(Action::Trunc),
        any::<u32>().prop_map(Action::Meter),
        (30u16..=1000, prop::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(k, d)| Action::Other(k, d)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            (any::<u32>(), prop::collection::vec(inner.clone(), 0..3)).prop_map(
                |(probability, actions)| Action::Sample {
                    probability,
                    actions
                }
            ),
            prop::collection::vec(inner.clone(), 0..3).prop_map(Action::Clone),
            (
                any::<u16>(),
                prop::collection::vec(inner.clone(), 0..3),
                prop::collection::vec(inner, 0..3)
            )
                .prop_map(|(len, greater, less_equal)| Action::CheckPktLen {
                    len,
                    greater,
                    less_equal
                }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_key(&b);
        let _ = decode_actions(&b);
        // What the agent reads off its sockets: replies, raw netlink buffers and upcalls.
        let _ = msg::parse_dp(&b);
        let _ = msg::parse_vport(&b);
        if let Ok(e) = msg::parse_flow(&b) {
            let _ = e.to_flow(0).map(|f| f.to_string());
        }
        let _ = odp::sock::split_msgs(&b);
        for cmd in [msg::cmd::PACKET_MISS, msg::cmd::PACKET_ACTION, 0] {
            let _ = msg::parse_upcall(cmd, &b);
        }
        let _ = odp::families::parse_family("ovs_flow", &b);
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_messages(
        k in flow_key(),
        acts in prop::collection::vec(action(), 0..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let f = Flow { mask: k.exact_mask(), key: k, actions: acts, ..Flow::default() };
        let mut payload = Vec::new();
        msg::flow_put_payload(1, &FlowPut::from_flow(&f).unwrap(), &mut payload).unwrap();
        for (i, v) in flips {
            let at = i.index(payload.len());
            payload[at] = v;
        }
        if let Ok(Ok(f)) = msg::parse_flow(&payload).map(|e| e.to_flow(0)) {
            // Whatever decodes must print without panicking.
            let _ = f.to_string();
        }
    }

    #[test]
    fn keys_round_trip_through_the_wire(k in flow_key()) {
        let mut b = Vec::new();
        encode_key(&k, &mut b).unwrap();
        prop_assert_eq!(decode_key(&b).unwrap(), k);
    }

    #[test]
    fn actions_round_trip_through_the_wire(acts in prop::collection::vec(action(), 0..6)) {
        let mut b = Vec::new();
        encode_actions(&acts, &mut b).unwrap();
        prop_assert_eq!(decode_actions(&b).unwrap(), acts);
    }

    #[test]
    fn printed_exact_flows_parse_back(k in flow_key()) {
        // Keys whose fields are all exactly matched print every value, so the text holds
        // the whole key. (Unknown attributes print as `keyN(..)` and come back too.)
        let mut k = k;
        // ipv6 labels are 20 bits and TCP flags 12 in the text form.
        if let Some(v) = &mut k.ipv6 {
            v.label &= 0xfffff;
            v.frag %= 3;
        }
        // Fragment types beyond `later` print as `<error>`, as in OVS.
        if let Some(v) = &mut k.ipv4 {
            v.frag %= 3;
        }
        if let Some(v) = k.encap.as_mut().and_then(|e| e.ipv4.as_mut()) {
            v.frag %= 3;
        }
        if let Some(v) = &mut k.tcp_flags {
            *v &= 0x0fff;
        }
        // ct_state has 8 defined bits; the parser refuses others (the kernel does too).
        if let Some(v) = &mut k.ct_state {
            *v &= 0xff;
        }
        if let Some(e) = &mut k.encap
            && e.is_empty()
        {
            e.eth_type = Some(0x0800);
        }
        // Random Geneve bytes are not a valid TLV chain (OVS prints those as an error
        // message); make each option's length fit what follows it.
        if let Some(g) = k.tunnel.as_mut().and_then(|t| t.geneve.as_mut()) {
            let mut b = g.as_bytes().to_vec();
            let mut off = 0;
            while off + 4 <= b.len() {
                let dl = ((b.len() - off - 4) / 4).min(31);
                b[off + 3] = dl as u8;
                off += 4 + dl * 4;
            }
            **g = GeneveOpts::new(&b).unwrap();
        }
        let f = Flow { mask: k.exact_mask(), key: k, ..Flow::default() };
        let text = f.to_string();
        let back = parse_flow(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        prop_assert_eq!(back.to_string(), text);
    }
}
