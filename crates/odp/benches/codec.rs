//! Encode and decode of a typical megaflow (what the agent installs for pod traffic: a
//! conntrack-zoned, tunnelled TCP flow) and of an upcall key, with criterion.
//!
//! Run: `cargo bench -p odp --bench codec`. The last line printed is the decode/encode ratio.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use odp::action::{Ct, Nat, NatKind, SetKey};
use odp::key::{KeyEthernet, KeyIpv4, KeyPorts, TunnelKey, ct_state};
use odp::{Action, Flow, FlowKey, decode_actions, decode_key, encode_actions, encode_key};

/// A megaflow as the simulation produces it: matched on recirc id, port, conntrack state
/// and zone, MACs, IPv4 5-tuple; NAT through conntrack then into a VXLAN tunnel.
pub fn megaflow() -> Flow {
    let key = FlowKey {
        recirc_id: Some(7),
        in_port: Some(3),
        ct_state: Some(ct_state::TRACKED | ct_state::ESTABLISHED),
        ct_zone: Some(12),
        eth: Some(KeyEthernet {
            src: [0x02, 0, 0, 0, 0, 1],
            dst: [0x02, 0, 0, 0, 0, 2],
        }),
        eth_type: Some(0x0800),
        ipv4: Some(KeyIpv4 {
            src: Ipv4Addr::new(10, 1, 0, 5),
            dst: Ipv4Addr::new(10, 2, 0, 9),
            proto: 6,
            tos: 0,
            ttl: 64,
            frag: 0,
        }),
        tcp: Some(KeyPorts {
            src: 40000,
            dst: 80,
        }),
        tcp_flags: Some(0),
        ..FlowKey::default()
    };
    let mut mask = key.exact_mask();
    if let Some(ip) = &mut mask.ipv4 {
        ip.tos = 0;
        ip.ttl = 0;
    }
    if let Some(t) = &mut mask.tcp {
        t.src = 0;
    }
    mask.tcp_flags = Some(0);
    let actions = vec![
        Action::Ct(Ct {
            commit: true,
            zone: Some(12),
            nat: Some(Nat {
                kind: Some(NatKind::Dst),
                ip_min: Some(Ipv4Addr::new(10, 3, 0, 4).into()),
                proto_min: Some(8080),
                ..Nat::default()
            }),
            ..Ct::default()
        }),
        Action::Set(SetKey::Tunnel(TunnelKey {
            tun_id: Some(0x1234),
            ipv4_src: Some(Ipv4Addr::new(192, 168, 0, 1)),
            ipv4_dst: Some(Ipv4Addr::new(192, 168, 0, 2)),
            ttl: Some(64),
            df: true,
            ..TunnelKey::default()
        })),
        Action::Output(1),
    ];
    Flow {
        key,
        mask,
        actions,
        ..Flow::default()
    }
}

fn encode(f: &Flow, buf: &mut Vec<u8>) {
    buf.clear();
    encode_key(&f.key, buf).unwrap();
    encode_key(&f.mask, buf).unwrap();
    encode_actions(&f.actions, buf).unwrap();
}

fn benches(c: &mut Criterion) {
    let f = megaflow();
    let (mut k, mut m, mut a) = (Vec::new(), Vec::new(), Vec::new());
    encode_key(&f.key, &mut k).unwrap();
    encode_key(&f.mask, &mut m).unwrap();
    encode_actions(&f.actions, &mut a).unwrap();

    let mut buf = Vec::with_capacity(1024);
    c.bench_function("megaflow encode (key+mask+actions)", |b| {
        b.iter(|| encode(black_box(&f), &mut buf))
    });
    c.bench_function("megaflow decode (key+mask+actions)", |b| {
        b.iter(|| {
            (
                decode_key(black_box(&k)).unwrap(),
                decode_key(black_box(&m)).unwrap(),
                decode_actions(black_box(&a)).unwrap(),
            )
        })
    });
    c.bench_function("megaflow text (ovs-dpctl dump form)", |b| {
        b.iter(|| black_box(&f).to_string())
    });
}

criterion_group!(codec, benches);

fn main() {
    codec();
    Criterion::default().configure_from_args().final_summary();

    // A plain timing of the same work, for the ratio (criterion keeps its estimates private).
    let f = megaflow();
    let mut buf = Vec::with_capacity(1024);
    encode(&f, &mut buf);
    let (mut k, mut m, mut a) = (Vec::new(), Vec::new(), Vec::new());
    encode_key(&f.key, &mut k).unwrap();
    encode_key(&f.mask, &mut m).unwrap();
    encode_actions(&f.actions, &mut a).unwrap();
    let n = 200_000u32;
    let t = Instant::now();
    for _ in 0..n {
        encode(black_box(&f), &mut buf);
    }
    let enc = t.elapsed() / n;
    let t = Instant::now();
    for _ in 0..n {
        black_box((
            decode_key(black_box(&k)).unwrap(),
            decode_key(black_box(&m)).unwrap(),
            decode_actions(black_box(&a)).unwrap(),
        ));
    }
    let dec = t.elapsed() / n;
    println!(
        "megaflow of {} bytes (key {}, mask {}, actions {}): encode {:?}, decode {:?}, decode/encode = {:.2}",
        buf.len(),
        k.len(),
        m.len(),
        a.len(),
        enc,
        dec,
        dec.as_secs_f64() / enc.as_secs_f64()
    );
}
