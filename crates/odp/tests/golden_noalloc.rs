//! The per-packet path allocates nothing once its buffers are warm: a caller that clears and
//! reuses its key, mask, action list and byte buffer builds and encodes a megaflow (ct with
//! NAT, set(tunnel), output) without one heap allocation; and a handler that decodes each
//! upcall into the same value and encodes each flow put into the same one writes the flow
//! and execute requests without one either. Allocations are counted per thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::Ipv4Addr;

use odp::action::{Ct, Nat, NatKind, SetKey};
use odp::key::{KeyEthernet, KeyIpv4, KeyPorts, TunnelKey};
use odp::msg::{self, FlowPut, Upcall};
use odp::{Action, Flow, FlowKey, decode_key, encode_actions, encode_key};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // During a thread's teardown the counter may be gone; those allocations are no test's.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

/// Allocations made by this thread so far.
fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

// SAFETY: every method forwards to the system allocator with the caller's arguments, so it
// upholds the GlobalAlloc contract exactly as System does; it only counts the calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn build(i: u32, key: &mut FlowKey, mask: &mut FlowKey, acts: &mut Vec<Action>) {
    key.clear();
    mask.clear();
    acts.clear();
    key.in_port = Some(i % 8);
    mask.in_port = Some(u32::MAX);
    key.eth = Some(KeyEthernet {
        src: [2, 0, 0, 0, 0, 1],
        dst: [2, 0, 0, 0, 0, 2],
    });
    mask.eth = Some(KeyEthernet {
        src: [0; 6],
        dst: [0xff; 6],
    });
    key.eth_type = Some(0x0800);
    mask.eth_type = Some(u16::MAX);
    key.ipv4 = Some(KeyIpv4 {
        src: Ipv4Addr::new(10, 0, 0, 1),
        dst: Ipv4Addr::from(0x0a00_0000 + i),
        proto: 6,
        ..KeyIpv4::default()
    });
    mask.ipv4 = Some(KeyIpv4 {
        dst: Ipv4Addr::BROADCAST,
        proto: 0xff,
        frag: 0xff,
        ..KeyIpv4::default()
    });
    key.tcp = Some(KeyPorts { src: 1000, dst: 80 });
    mask.tcp = Some(KeyPorts {
        src: 0,
        dst: 0xffff,
    });
    acts.push(Action::Ct(Ct {
        commit: true,
        zone: Some(5),
        nat: Some(Nat {
            kind: Some(NatKind::Dst),
            ip_min: Some(Ipv4Addr::new(10, 3, 0, 4).into()),
            proto_min: Some(8080),
            ..Nat::default()
        }),
        ..Ct::default()
    }));
    acts.push(Action::Set(SetKey::Tunnel(TunnelKey {
        tun_id: Some(u64::from(i)),
        ipv4_dst: Some(Ipv4Addr::new(192, 168, 0, 2)),
        ttl: Some(64),
        ..TunnelKey::default()
    })));
    acts.push(Action::Output(1));
}

#[test]
fn building_and_encoding_a_megaflow_allocates_nothing_after_warm_up() {
    let (mut key, mut mask, mut acts) = (FlowKey::default(), FlowKey::default(), Vec::new());
    let mut buf = Vec::new();
    for i in 0..4 {
        build(i, &mut key, &mut mask, &mut acts);
        buf.clear();
        encode_key(&key, &mut buf).unwrap();
        encode_key(&mask, &mut buf).unwrap();
        encode_actions(&acts, &mut buf).unwrap();
    }
    let before = allocs();
    for i in 0..1000 {
        build(i, &mut key, &mut mask, &mut acts);
        buf.clear();
        encode_key(&key, &mut buf).unwrap();
        encode_key(&mask, &mut buf).unwrap();
        encode_actions(&acts, &mut buf).unwrap();
    }
    let after = allocs();
    assert_eq!(after - before, 0, "allocations in 1000 builds+encodes");
    assert!(
        buf.len() > 100,
        "the flow was encoded ({} bytes)",
        buf.len()
    );
}

/// One upcall as the kernel sends it: `ovs_header`, the packet and the key it extracted.
fn upcall_payload(i: u32) -> Vec<u8> {
    let (mut key, mut mask, mut acts) = (FlowKey::default(), FlowKey::default(), Vec::new());
    build(i, &mut key, &mut mask, &mut acts);
    let mut k = Vec::new();
    encode_key(&key, &mut k).unwrap();
    odp::nla::build(&msg::ovs_header(7), |w| {
        w.put(odp::nla::packet::PACKET, &[0xab; 98])?;
        w.put(odp::nla::packet::KEY, &k)
    })
    .unwrap()
}

#[test]
fn decoding_an_upcall_and_writing_its_flow_and_execute_allocates_nothing_after_warm_up() {
    let payloads: Vec<Vec<u8>> = (0..8).map(upcall_payload).collect();
    let mut u = Upcall::default();
    let mut flow = Flow::default();
    let mut put = FlowPut::default();
    let mut acts = Vec::new();
    let mut scratch = FlowKey::default();
    let mut out = Vec::new();
    // Writes the flow put, then the execute, into `out`; returns where the put ends.
    let mut handle = |i: u32, out: &mut Vec<u8>| {
        msg::parse_upcall_into(msg::cmd::PACKET_MISS, &payloads[i as usize % 8], &mut u).unwrap();
        flow.key = decode_key(&u.key).unwrap();
        build(i, &mut scratch, &mut flow.mask, &mut acts);
        flow.actions.clear();
        flow.actions.extend_from_slice(&acts);
        flow.ufid = Some(u128::from(i));
        put.encode(&flow).unwrap();
        out.clear();
        msg::flow_put_payload(7, &put, out).unwrap();
        let put_len = out.len();
        msg::execute_payload(7, &u.packet, &u.key, &put.actions, out).unwrap();
        put_len
    };
    for i in 0..8 {
        handle(i, &mut out);
    }
    let before = allocs();
    let mut put_len = 0;
    for i in 0..1000 {
        put_len = handle(i, &mut out);
    }
    assert_eq!(allocs() - before, 0, "allocations in 1000 upcalls");
    assert!(
        out.len() > 200,
        "requests were written ({} bytes)",
        out.len()
    );
    let back = msg::parse_flow(&out[..put_len]).unwrap();
    assert_eq!(back.ufid(), Some(999), "the last flow put reads back");
}
