//! Peak FP32 rate of this machine: register-resident FMA chains, no memory traffic.
//!
//! Each thread runs `ACC` independent accumulator chains `acc = acc * a + b` (one fused
//! multiply-add per vector per step), enough chains to cover the FMA latency times the number
//! of FMA pipes on current x86 cores (4 cycles × 2 pipes = 8 in flight; 12 on AVX2 with its 16
//! registers, 24 on AVX-512 with 32). The widest instruction set found at run time is used:
//! AVX-512F (16 lanes), AVX2 + FMA (8 lanes), else scalar `mul_add`. A FMA counts 2 FLOPs per
//! lane. Each figure is the best of `--repeats` runs of `--seconds` each (the best run is the
//! one least disturbed by other processes). A chain of dependent integer adds (1 cycle each)
//! estimates the clock the core actually ran at, so FLOP/cycle/core can be read off.
//!
//!     cargo run --release --manifest-path bench/peak/Cargo.toml -- [--threads 1,2] [--json F]
//!
//! `--isa avx2` (or `scalar`) measures a narrower instruction set than the widest found.

use std::sync::Barrier;
use std::time::Instant;

const ACC_AVX512: usize = 24;
const ACC_AVX2: usize = 12;
const ACC_SCALAR: usize = 8;

#[derive(Clone, Copy)]
enum Isa {
    Avx512,
    Avx2,
    Scalar,
}

impl Isa {
    fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512f",
            Isa::Avx2 => "avx2+fma",
            Isa::Scalar => "scalar mul_add",
        }
    }

    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Scalar => 1,
        }
    }

    fn chains(self) -> usize {
        match self {
            Isa::Avx512 => ACC_AVX512,
            Isa::Avx2 => ACC_AVX2,
            Isa::Scalar => ACC_SCALAR,
        }
    }

    /// FLOPs of one call of `run(steps)`.
    fn flops(self, steps: u64) -> f64 {
        2.0 * (self.lanes() * self.chains()) as f64 * steps as f64
    }

    /// `steps` rounds of one FMA per chain; the result only defeats dead-code elimination.
    fn run(self, steps: u64) -> f32 {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` found avx512f on this CPU.
            Isa::Avx512 => unsafe { x86::avx512(steps) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` found avx2 and fma on this CPU.
            Isa::Avx2 => unsafe { x86::avx2(steps) },
            _ => scalar(steps),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{ACC_AVX2, ACC_AVX512};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(steps: u64) -> f32 {
        let a = _mm512_set1_ps(std::hint::black_box(0.999_99));
        let b = _mm512_set1_ps(std::hint::black_box(1e-5));
        let mut acc = [_mm512_set1_ps(0.5); ACC_AVX512];
        for (i, v) in acc.iter_mut().enumerate() {
            *v = _mm512_add_ps(*v, _mm512_set1_ps(i as f32 * 1e-3));
        }
        for _ in 0..steps {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(steps: u64) -> f32 {
        let a = _mm256_set1_ps(std::hint::black_box(0.999_99));
        let b = _mm256_set1_ps(std::hint::black_box(1e-5));
        let mut acc = [_mm256_set1_ps(0.5); ACC_AVX2];
        for (i, v) in acc.iter_mut().enumerate() {
            *v = _mm256_add_ps(*v, _mm256_set1_ps(i as f32 * 1e-3));
        }
        for _ in 0..steps {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in acc {
            s = _mm256_add_ps(s, v);
        }
        let mut out = [0f32; 8];
        // SAFETY: `out` holds 8 f32, what one unaligned 256-bit store writes.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
        out.iter().sum()
    }
}

fn scalar(steps: u64) -> f32 {
    let a = std::hint::black_box(0.999_99f32);
    let b = std::hint::black_box(1e-5f32);
    let mut acc = [0.5f32; ACC_SCALAR];
    for _ in 0..steps {
        for v in acc.iter_mut() {
            *v = v.mul_add(a, b);
        }
    }
    acc.iter().sum()
}

/// Seconds for `threads` threads to each run `steps` rounds, started together.
fn wall(isa: Isa, threads: usize, steps: u64) -> f64 {
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    std::hint::black_box(isa.run(steps))
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().expect("peak thread panicked");
        }
        start.elapsed().as_secs_f64()
    })
}

/// Best GFLOP/s of `repeats` runs of about `seconds` each, on `threads` threads.
fn peak(isa: Isa, threads: usize, seconds: f64, repeats: usize) -> f64 {
    let mut steps = 1u64 << 16;
    while wall(isa, 1, steps) < 0.05 {
        steps *= 2;
    }
    let steps = (steps as f64 * seconds / wall(isa, 1, steps)).max(1.0) as u64;
    (0..repeats)
        .map(|_| threads as f64 * isa.flops(steps) / wall(isa, threads, steps) / 1e9)
        .fold(0.0, f64::max)
}

/// Clock of one core in GHz: a chain of dependent integer adds retires one per cycle.
///
/// The adds take their operand from a register: adds of an immediate can be folded when
/// instructions are renamed (Intel's Golden Cove cores do so), and a chain of them then runs
/// several per cycle, which read 12.7-18.2 GHz on the Xeon of docs/performance.md.
#[cfg(target_arch = "x86_64")]
fn clock_ghz(seconds: f64, repeats: usize) -> Option<f64> {
    fn chain(iters: u64) -> f64 {
        let start = Instant::now();
        let mut x = 0u64;
        // SAFETY: register-only arithmetic; 16 dependent adds per iteration, the loop counter
        // (dec/jnz, macro-fused) runs in parallel on another port.
        unsafe {
            std::arch::asm!(
                "2:",
                "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
                "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
                "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
                "add {x}, {one}", "add {x}, {one}", "add {x}, {one}", "add {x}, {one}",
                "dec {n}",
                "jnz 2b",
                x = inout(reg) x,
                n = inout(reg) iters => _,
                one = in(reg) std::hint::black_box(1u64),
                options(nomem, nostack),
            );
        }
        std::hint::black_box(x);
        start.elapsed().as_secs_f64()
    }
    let iters = ((seconds * 1e9 / 16.0) as u64).max(1);
    let best = (0..repeats)
        .map(|_| chain(iters))
        .fold(f64::INFINITY, f64::min);
    Some(16.0 * iters as f64 / best / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn clock_ghz(_seconds: f64, _repeats: usize) -> Option<f64> {
    None
}

fn fail(msg: &str) -> ! {
    eprintln!("adp-peak: {msg}");
    std::process::exit(2)
}

fn main() {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = vec![1, all];
    let (mut seconds, mut repeats, mut json) = (0.5f64, 5usize, None::<String>);
    let mut isa = Isa::detect();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--threads" => {
                threads = value()
                    .split(',')
                    .map(|t| match t.parse::<usize>() {
                        Ok(n) if n > 0 => n,
                        _ => fail(&format!("--threads: not a positive integer: {t:?}")),
                    })
                    .collect()
            }
            "--seconds" => {
                seconds = match value().parse() {
                    Ok(s) if s > 0.0 => s,
                    _ => fail("--seconds needs a positive number"),
                }
            }
            "--repeats" => {
                repeats = match value().parse() {
                    Ok(r) if r > 0 => r,
                    _ => fail("--repeats needs a positive integer"),
                }
            }
            "--json" => json = Some(value()),
            "--isa" => {
                let want = match value().as_str() {
                    "avx512f" => Isa::Avx512,
                    "avx2" => Isa::Avx2,
                    "scalar" => Isa::Scalar,
                    other => fail(&format!("--isa: {other:?} is not avx512f, avx2 or scalar")),
                };
                if want.lanes() > isa.lanes() {
                    fail(&format!("--isa {}: this CPU lacks it", want.name()));
                }
                isa = want;
            }
            "-h" | "--help" => {
                println!(
                    "adp-peak [--threads LIST (default 1,{all})] [--seconds S (0.5)] \
                     [--repeats R (5)] [--isa avx512f|avx2|scalar (widest found)] [--json FILE]"
                );
                return;
            }
            _ => fail(&format!("unknown option {a} (see --help)")),
        }
    }
    threads.dedup();
    let ghz = clock_ghz(seconds, repeats);
    println!(
        "isa: {} ({} f32 lanes, {} independent FMA chains per thread)",
        isa.name(),
        isa.lanes(),
        isa.chains()
    );
    if let Some(g) = ghz {
        println!("clock estimate (dependent integer adds, 1 thread): {g:.2} GHz");
    }
    let mut rows = Vec::new();
    for &t in &threads {
        let g = peak(isa, t, seconds, repeats);
        let per_cycle = ghz.map(|c| g / t as f64 / c);
        match per_cycle {
            Some(f) => println!("{t} thread(s): {g:.1} GFLOP/s FP32 ({f:.1} FLOP/cycle/core)"),
            None => println!("{t} thread(s): {g:.1} GFLOP/s FP32"),
        }
        rows.push(format!("{{\"threads\": {t}, \"gflops\": {g:.3}}}"));
    }
    if let Some(path) = json {
        let clock = ghz.map_or("null".into(), |g| format!("{g:.3}"));
        let text = format!(
            "{{\"isa\": \"{}\", \"lanes\": {}, \"chains\": {}, \"clock_ghz\": {clock}, \
             \"cpus\": {all}, \"rows\": [{}]}}\n",
            isa.name(),
            isa.lanes(),
            isa.chains(),
            rows.join(", ")
        );
        std::fs::write(&path, text).unwrap_or_else(|e| fail(&format!("cannot write {path}: {e}")));
    }
}
