//! `cargo bench -p sim`: simulations per second on one core for the five cases of the
//! simulation issue, with criterion's statistics, then a summary measured in the same run:
//! each case's rate, its ratio to case (a) as the baseline, and heap allocations per
//! simulation (counted by an instrumented global allocator).

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sim::fixtures::cases::{self, Case};
use sim::{Simulation, simulate_into};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn criterion_benches(c: &mut Criterion, all: &[Case]) {
    let mut g = c.benchmark_group("simulate");
    g.throughput(Throughput::Elements(1));
    for case in all {
        let ctx = case.ctx();
        let mut s = Simulation::new();
        g.bench_function(format!("{} {}", case.name, case.what), |b| {
            b.iter(|| {
                simulate_into(&case.topology, black_box(&ctx), &mut s);
                black_box(s.actions.len())
            })
        });
    }
    g.finish();
    // Compiling a snapshot happens on every NSDB change; (e) is the large one.
    let b = cases::large_builder();
    let dp = b.datapath();
    c.bench_function("compile/(e) 10,000 ports and 1,000 routes", |bench| {
        bench.iter(|| {
            black_box(sim::Topology::compile(&b.records, "h1", &dp).map(|t| t.port_count()))
        })
    });
}

/// Best of several timed rounds, in simulations per second.
fn rate(case: &Case) -> f64 {
    let ctx = case.ctx();
    let mut s = Simulation::new();
    for _ in 0..10_000 {
        simulate_into(&case.topology, black_box(&ctx), &mut s);
    }
    let mut best = 0f64;
    for _ in 0..7 {
        let n = 200_000u32;
        let start = Instant::now();
        for _ in 0..n {
            simulate_into(&case.topology, black_box(&ctx), &mut s);
            black_box(s.actions.len());
        }
        let e = start.elapsed().max(Duration::from_nanos(1));
        best = best.max(f64::from(n) / e.as_secs_f64());
    }
    best
}

fn allocs_per_sim(case: &Case) -> f64 {
    let ctx = case.ctx();
    let mut s = Simulation::new();
    simulate_into(&case.topology, &ctx, &mut s);
    let region = Region::new(GLOBAL);
    let n = 10_000;
    for _ in 0..n {
        simulate_into(&case.topology, black_box(&ctx), &mut s);
    }
    let c = region.change();
    (c.allocations + c.reallocations) as f64 / n as f64
}

fn main() {
    let all = cases::all();
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &all);
    c.final_summary();

    println!("\nsummary (same run; ratio = rate / rate of (a)):");
    println!(
        "{:<4} {:<46} {:>14} {:>8} {:>12}",
        "case", "what", "sims/s", "ratio", "allocs/sim"
    );
    let rates: Vec<f64> = all.iter().map(rate).collect();
    let base = rates[0];
    for (case, r) in all.iter().zip(&rates) {
        println!(
            "{:<4} {:<46} {:>14.0} {:>8.3} {:>12}",
            case.name,
            case.what,
            r,
            r / base,
            allocs_per_sim(case)
        );
    }
    let goal = |name: &str, r: f64, want: f64| {
        let verdict = if r >= want { "met" } else { "NOT met" };
        println!("goal {name}: >= {want:.0}/s: {verdict} ({r:.0}/s)");
    };
    goal("(b)", rates[1], 1_000_000.0);
    goal("(c)", rates[2], 300_000.0);
}
