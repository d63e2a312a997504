//! The per-packet path allocates nothing once its buffers are warm: a caller that clears and
//! reuses its key, mask, action list and byte buffer builds and encodes a megaflow (ct with
//! NAT, set(tunnel), output) without one heap allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

use odp::action::{Ct, Nat, NatKind, SetKey};
use odp::key::{KeyEthernet, KeyIpv4, KeyPorts, TunnelKey};
use odp::{Action, FlowKey, encode_actions, encode_key};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments, so it
// upholds the GlobalAlloc contract exactly as System does; it only counts the calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
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
    let before = ALLOCS.load(Ordering::Relaxed);
    for i in 0..1000 {
        build(i, &mut key, &mut mask, &mut acts);
        buf.clear();
        encode_key(&key, &mut buf).unwrap();
        encode_key(&mask, &mut buf).unwrap();
        encode_actions(&acts, &mut buf).unwrap();
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "allocations in 1000 builds+encodes");
    assert!(
        buf.len() > 100,
        "the flow was encoded ({} bytes)",
        buf.len()
    );
}
