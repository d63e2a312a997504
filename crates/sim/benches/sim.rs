//! `cargo bench -p sim`: simulations per second on one core for the five cases of the
//! simulation issue and their IPv6 routed variant (b6), with criterion's statistics, then a summary measured in the same run:
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

/// Nanoseconds this thread has spent on a CPU (`/proc/thread-self/schedstat`), so a rate
/// can be computed that other processes on a shared machine do not skew.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Best of several timed rounds: (wall-clock sims/s, on-CPU sims/s).
fn rate(case: &Case) -> (f64, f64) {
    let ctx = case.ctx();
    let mut s = Simulation::new();
    for _ in 0..10_000 {
        simulate_into(&case.topology, black_box(&ctx), &mut s);
    }
    let (mut best, mut best_cpu) = (0f64, 0f64);
    for _ in 0..7 {
        let n = 200_000u32;
        let cpu0 = cpu_ns();
        let start = Instant::now();
        for _ in 0..n {
            simulate_into(&case.topology, black_box(&ctx), &mut s);
            black_box(s.actions.len());
        }
        let e = start.elapsed().max(Duration::from_nanos(1));
        best = best.max(f64::from(n) / e.as_secs_f64());
        if let (Some(a), Some(b)) = (cpu0, cpu_ns()) {
            best_cpu = best_cpu.max(f64::from(n) * 1e9 / (b.saturating_sub(a).max(1)) as f64);
        }
    }
    (best, best_cpu)
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

    println!("\nsummary (same run; ratio = rate / rate of (a); cpu = per second on a CPU, which");
    println!("the load of a shared machine does not skew):");
    println!(
        "{:<4} {:<46} {:>12} {:>12} {:>8} {:>11}",
        "case", "what", "sims/s", "cpu sims/s", "ratio", "allocs/sim"
    );
    let rates: Vec<(f64, f64)> = all.iter().map(rate).collect();
    let base = rates[0];
    for (case, (r, cpu)) in all.iter().zip(&rates) {
        let ratio = if base.1 > 0.0 {
            cpu / base.1
        } else {
            r / base.0
        };
        println!(
            "{:<4} {:<46} {:>12.0} {:>12.0} {:>8.3} {:>11}",
            case.name,
            case.what,
            r,
            cpu,
            ratio,
            allocs_per_sim(case)
        );
    }
    let goal = |name: &str, r: f64, want: f64| {
        let verdict = if r >= want { "met" } else { "NOT met" };
        println!("goal {name}: >= {want:.0}/s: {verdict} ({r:.0}/s)");
    };
    goal("(b)", rates[1].0, 1_000_000.0);
    goal("(c)", rates[2].0, 300_000.0);
}
