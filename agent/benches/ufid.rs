//! `cargo bench -p weft-agent --bench ufid`: the cost of naming a megaflow, next to the
//! simulation that made it, for a routed TCP packet (the upcall handler's steady path). It
//! runs criterion, then prints a summary measured in the same run: simulations, text UFIDs
//! (the masked match printed as `ovs-dpctl` prints it, then hashed: the former way) and wire
//! UFIDs (the masked key and mask in their netlink encoding, hashed: `install::ufid`) per
//! second, each as a ratio to the simulation.

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use sim::fixtures::{TopoBuilder, pkt};
use sim::{Fields, PacketContext, Simulation, Topology, simulate_into};
use weft_agent::install;

fn topo() -> TopoBuilder {
    Topology::test()
        .bridge("b1")
        .bridge("b2")
        .port("p1", "b1", "10.0.1.11")
        .port("p4", "b2", "10.0.2.14")
        .router("r1")
        .link("r1", "b1", "10.0.1.1/24")
        .link("r1", "b2", "10.0.2.1/24")
}

/// The key of a TCP packet from p1 to p4, as an upcall reports it.
fn upcall_key(b: &TopoBuilder) -> odp::FlowKey {
    let (p1, gw) = (b.mac("p1"), b.mac("r1-b1"));
    let f = pkt::tcp(b.dp("p1"), p1, gw, "10.0.1.11", "10.0.2.14", 40000, 80);
    f.to_key()
}

/// The former UFID: the masked match's text, hashed.
fn text_ufid(fields: &Fields, sim: &Simulation) -> u128 {
    let masked = sim.flow(fields);
    let text = format!("{}", odp::MatchDisplay(&masked.key, &masked.mask));
    let hi = sim::hash::fnv1a(0x5746_4654, text.as_bytes());
    let lo = sim::hash::fnv1a(0x7566_6964, text.as_bytes());
    (u128::from(hi) << 64) | u128::from(lo)
}

/// Best of several rounds of `n` calls of `f`, in calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    for _ in 0..10_000 {
        f();
    }
    let mut best = 0f64;
    for _ in 0..5 {
        let n = 100_000u32;
        let start = Instant::now();
        for _ in 0..n {
            f();
        }
        best = best.max(f64::from(n) / start.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let b = topo();
    let t = b.build();
    let key = upcall_key(&b);
    let ctx = PacketContext::new(Fields::from_key(&key));
    let mut s = Simulation::new();
    simulate_into(&t, &ctx, &mut s);
    assert!(s.install && !s.actions.is_empty(), "{}", s.actions_text());
    let fields = Fields::from_key(&key);
    assert_ne!(install::ufid(&fields, &s), 0);

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("upcall");
    let mut sim_s = Simulation::new();
    g.bench_function("simulate", |bench| {
        bench.iter(|| {
            simulate_into(&t, black_box(&ctx), &mut sim_s);
            black_box(sim_s.actions.len())
        })
    });
    g.bench_function("ufid text (former)", |bench| {
        bench.iter(|| text_ufid(black_box(&fields), &s))
    });
    g.bench_function("ufid wire", |bench| {
        bench.iter(|| install::ufid(black_box(&fields), &s))
    });
    g.finish();
    c.final_summary();

    let sims = rate(|| {
        simulate_into(&t, black_box(&ctx), &mut sim_s);
        black_box(sim_s.actions.len());
    });
    let text = rate(|| {
        black_box(text_ufid(black_box(&fields), &s));
    });
    let wire = rate(|| {
        black_box(install::ufid(black_box(&fields), &s));
    });
    println!("\nsummary (one core, best of 5 rounds of 100,000):");
    println!("  simulate            {sims:>12.0}/s  1.00x");
    for (name, r) in [("ufid text (former)", text), ("ufid wire", wire)] {
        println!(
            "  {name:<19} {r:>12.0}/s  {:.2}x the simulation's rate",
            r / sims
        );
    }
    println!("  wire / text: {:.2}x", wire / text);
}
