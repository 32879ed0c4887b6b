//! The profiler behind `--profile` (docs/design.md §7): GPU time per kernel entry point from
//! timestamp queries, wall-clock time per phase of the host loop, dispatches, submits and
//! readbacks per iteration, and a Chrome trace (chrome://tracing, Perfetto) of one iteration.
//!
//! While profiling, each dispatch gets a compute pass of its own whose start and end write a
//! timestamp (some GPUs sample timestamps only at pass boundaries). When a recorder submits,
//! it resolves its timestamps into a buffer and hands it to the profiler, which reads it at the
//! next wait (`Gpu::wait`, a download, the end of an iteration or the report), once the GPU has
//! run it: a submit does not wait, so the GPU can run ahead of the host as it does unprofiled.
//! The passes still cost what they cost, which is why profiling is off unless asked for. Off,
//! a dispatch pays one relaxed atomic load, and phases and iterations one more each.
//! Without the adapter's TIMESTAMP_QUERY feature the kernels are counted but not timed.

use super::{Counts, Gpu};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What one dispatch computes, as its kernel module states it next to the dispatch:
/// floating-point operations, and the bytes it must read and write at least once. The profiler
/// turns them into GFLOP/s and GB/s.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
}

impl Work {
    /// A memory-bound kernel reading and writing `floats` 4-byte values.
    pub fn floats(floats: usize) -> Work {
        Work { flops: 0.0, bytes: 4.0 * floats as f64 }
    }

    /// `flops` floating-point operations on `floats` 4-byte values read and written.
    pub fn flops(flops: usize, floats: usize) -> Work {
        Work { flops: flops as f64, bytes: 4.0 * floats as f64 }
    }
}

/// Dispatches one recorder times before it must submit: two timestamps each.
pub(crate) const MAX_TIMED_DISPATCHES: usize = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;

/// Submits whose timestamps may wait unread (each holds a query kit of about 64 KB); the next
/// one reads them all, waiting for the GPU.
const MAX_PENDING_SUBMITS: usize = 16;

/// The query set and buffers that hold one recorder's timestamps (pooled in the `Gpu`).
pub(crate) struct QueryKit {
    pub query_set: wgpu::QuerySet,
    pub resolve: wgpu::Buffer,
    pub readback: wgpu::Buffer,
}

impl QueryKit {
    fn new(device: &wgpu::Device) -> QueryKit {
        let count = wgpu::QUERY_SET_MAX_QUERIES;
        let size = count as u64 * wgpu::QUERY_SIZE as u64;
        let query_set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profiler"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor { label: Some(label), size, usage, mapped_at_creation: false })
        };
        QueryKit {
            query_set,
            resolve: buffer("timestamps", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: buffer("timestamps readback", wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
        }
    }
}

/// A dispatch waiting for its timestamps.
pub(crate) struct Timed {
    pub kernel: String,
    pub work: Work,
}

#[derive(Clone, Debug, Default)]
struct KernelTotals {
    calls: u64,
    ns: f64,
    work: Work,
}

/// One event of the Chrome trace format ("X": a complete event with a duration), in µs.
#[derive(Clone, Debug, Serialize)]
struct TraceEvent {
    name: String,
    cat: &'static str,
    ph: &'static str,
    ts: f64,
    dur: f64,
    pid: u32,
    tid: u32,
}

const HOST_TRACK: u32 = 0;
const GPU_TRACK: u32 = 1;
/// Events one trace keeps at most (a GPT-2 iteration has some tens of thousands).
const MAX_TRACE_EVENTS: usize = 500_000;

/// What the profiler has gathered since `Gpu::start_profiling`.
pub(crate) struct ProfileData {
    started: Instant,
    start_counts: Counts,
    kernels: Vec<(String, KernelTotals)>,
    phases: Vec<(&'static str, u64, Duration)>,
    iterations: usize,
    iteration_wall: Duration,
    iteration_counts: Counts,
    /// Submits whose timestamps could not be read back.
    lost: usize,
    trace: Vec<TraceEvent>,
    /// The traced iteration's kernels: entry point, first timestamp (GPU ticks) and nanoseconds,
    /// placed on the host's clock by `gpu_clock` when the trace is built.
    gpu_trace: Vec<(String, u64, f64)>,
    /// Microseconds since `started` at GPU tick 0, as closely as the reads bound it: each read
    /// after a wait says that the last timestamp it got was written no later than then.
    gpu_clock: Option<f64>,
    tracing: bool,
    trace_origin: Instant,
}

impl ProfileData {
    pub(crate) fn new(start_counts: Counts) -> ProfileData {
        let now = Instant::now();
        ProfileData {
            started: now,
            start_counts,
            kernels: Vec::new(),
            phases: Vec::new(),
            iterations: 0,
            iteration_wall: Duration::ZERO,
            iteration_counts: Counts::default(),
            lost: 0,
            trace: Vec::new(),
            gpu_trace: Vec::new(),
            gpu_clock: None,
            tracing: true,
            trace_origin: now,
        }
    }

    fn kernel(&mut self, name: &str) -> &mut KernelTotals {
        let at = match self.kernels.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                self.kernels.push((name.to_string(), KernelTotals::default()));
                self.kernels.len() - 1
            }
        };
        &mut self.kernels[at].1
    }

    fn add_work(&mut self, name: &str, work: Work, ns: f64) {
        let k = self.kernel(name);
        k.calls += 1;
        k.ns += ns;
        k.work.flops += work.flops;
        k.work.bytes += work.bytes;
    }

    fn push_event(&mut self, event: TraceEvent) {
        if self.tracing && self.trace.len() + self.gpu_trace.len() < MAX_TRACE_EVENTS {
            self.trace.push(event);
        }
    }

    /// The host's events and the kernels' on one clock, in µs since `trace_origin`.
    fn trace_events(&self, period_ns: f64) -> Vec<TraceEvent> {
        let mut events = self.trace.clone();
        if let Some(clock) = self.gpu_clock {
            let origin_us = self.trace_origin.saturating_duration_since(self.started).as_secs_f64() * 1e6;
            events.extend(self.gpu_trace.iter().map(|(kernel, start, ns)| TraceEvent {
                name: kernel.clone(),
                cat: "kernel",
                ph: "X",
                ts: clock + *start as f64 * period_ns / 1e3 - origin_us,
                dur: ns / 1e3,
                pid: GPU_TRACK,
                tid: 0,
            }));
        }
        events
    }
}

impl Gpu {
    /// Turns the profiler on (and resets it): from now on every dispatch is counted and, where
    /// the adapter has timestamp queries, timed. See `profile` for the report.
    pub fn start_profiling(&self) {
        self.read_pending_timestamps(); // into the profile this one replaces
        *self.profile.lock().unwrap() = ProfileData::new(self.counts());
        self.profiling.store(true, Ordering::Relaxed);
    }

    pub fn is_profiling(&self) -> bool {
        self.profiling.load(Ordering::Relaxed)
    }

    /// Whether kernels are timed on this adapter (its TIMESTAMP_QUERY feature).
    pub fn has_timestamps(&self) -> bool {
        self.device.features().contains(wgpu::Features::TIMESTAMP_QUERY)
    }

    /// Times a phase of the host loop ("rollout", "update", …) until the guard drops (or
    /// `Phase::finish` returns its seconds); the profiler, when on, records it. Phases should
    /// not nest.
    pub fn phase(&self, name: &'static str) -> Phase<'_> {
        Phase { gpu: self, name, started: Instant::now(), profiled: self.is_profiling() }
    }

    /// Marks one iteration of a loop (a PPO iteration, an SFT step) until the guard drops: the
    /// report gives counts per iteration, and the trace shows the second iteration (the first
    /// when there is only one), whose pipelines and buffers already exist. Checkpoints and
    /// evaluations belong outside it, so that the counts are the loop's steady state.
    pub fn iteration(&self) -> Iteration<'_> {
        if !self.is_profiling() {
            return Iteration { gpu: self, started: None, counts: Counts::default() };
        }
        self.read_pending_timestamps(); // the kernels before it are not this iteration's
        let mut p = self.profile.lock().unwrap();
        if p.iterations <= 1 {
            p.trace.clear();
            p.gpu_trace.clear();
            p.tracing = true;
            p.trace_origin = Instant::now();
        }
        drop(p);
        Iteration { gpu: self, started: Some(Instant::now()), counts: self.counts() }
    }

    pub(crate) fn take_query_kit(&self) -> QueryKit {
        self.query_kits.lock().unwrap().pop().unwrap_or_else(|| QueryKit::new(&self.device))
    }

    pub(crate) fn return_query_kit(&self, kit: QueryKit) {
        self.query_kits.lock().unwrap().push(kit);
    }

    /// A dispatch counted without a time (no timestamp queries on this adapter).
    pub(crate) fn profile_untimed(&self, kernel: &str, work: Work) {
        self.profile.lock().unwrap().add_work(kernel, work, 0.0);
    }

    /// Takes a submitted recorder's timed dispatches and the kit their timestamps were resolved
    /// into; `read_pending_timestamps` reads them once the GPU has run them.
    pub(crate) fn defer_timed(&self, kit: QueryKit, timed: Vec<Timed>) {
        let mut pending = self.pending_timed.lock().unwrap();
        pending.push((kit, timed));
        let full = pending.len() >= MAX_PENDING_SUBMITS;
        drop(pending);
        if full {
            self.read_pending_timestamps();
        }
    }

    /// Reads the timestamps of every submit handed to `defer_timed` since the last call, waiting
    /// for the GPU to have run them (at once after `Gpu::wait`), and adds each dispatch's time
    /// to its kernel and, in the traced iteration, to the trace.
    pub(crate) fn read_pending_timestamps(&self) {
        let batches = std::mem::take(&mut *self.pending_timed.lock().unwrap());
        if batches.is_empty() {
            return;
        }
        // Two timestamps per dispatch.
        let kits: Vec<(&QueryKit, usize)> = batches.iter().map(|(kit, timed)| (kit, 2 * timed.len())).collect();
        let read = self.read_timestamps_of(&kits);
        let now = Instant::now();
        let period = self.queue.get_timestamp_period() as f64; // ns per tick
        let mut p = self.profile.lock().unwrap();
        let mut last = None;
        for ((kit, timed), stamps) in batches.into_iter().zip(read) {
            let Some(stamps) = stamps else {
                p.lost += 1; // and the kit, its buffer in no known state, is let go
                continue;
            };
            for (i, t) in timed.into_iter().enumerate() {
                let (start, end) = (stamps[2 * i], stamps[2 * i + 1]);
                let ns = end.saturating_sub(start) as f64 * period;
                p.add_work(&t.kernel, t.work, ns);
                last = last.max(Some(end));
                if p.tracing && p.trace.len() + p.gpu_trace.len() < MAX_TRACE_EVENTS {
                    p.gpu_trace.push((t.kernel, start, ns));
                }
            }
            self.return_query_kit(kit);
        }
        if let Some(last) = last {
            // The GPU wrote `last` no later than now: a bound on its clock, the tighter the
            // sooner after the work a read comes.
            let bound = now.saturating_duration_since(p.started).as_secs_f64() * 1e6 - last as f64 * period / 1e3;
            p.gpu_clock = Some(p.gpu_clock.map_or(bound, |c: f64| c.min(bound)));
        }
    }

    /// The first `n` timestamps of `kit`, once the submit that resolved them into its readback
    /// buffer (`Recorder::resolve_timestamps`: the variants' GPU clock) has run, in ticks of
    /// `queue.get_timestamp_period()` ns; None if they could not be read. A wait.
    pub(crate) fn read_timestamps(&self, kit: &QueryKit, n: usize) -> Option<Vec<u64>> {
        self.read_timestamps_of(&[(kit, n)]).pop().flatten()
    }

    /// As `read_timestamps`, for several kits and their counts at one wait.
    fn read_timestamps_of(&self, kits: &[(&QueryKit, usize)]) -> Vec<Option<Vec<u64>>> {
        let bytes = |n: usize| n as u64 * wgpu::QUERY_SIZE as u64;
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, &(kit, n)) in kits.iter().enumerate() {
            let tx = tx.clone();
            kit.readback.slice(..bytes(n)).map_async(wgpu::MapMode::Read, move |r| {
                let _ = tx.send((i, r.is_ok()));
            });
        }
        drop(tx);
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely()); // a lost device maps nothing
        let mut mapped = vec![false; kits.len()];
        for (i, ok) in rx.try_iter() {
            mapped[i] = ok;
        }
        kits.iter()
            .zip(mapped)
            .map(|(&(kit, n), mapped)| {
                if !mapped {
                    return None;
                }
                let slice = kit.readback.slice(..bytes(n));
                let stamps = slice.get_mapped_range().ok().map(|view| bytemuck::pod_collect_to_vec(&view));
                kit.readback.unmap();
                stamps
            })
            .collect()
    }

    /// The report of everything profiled since `start_profiling`.
    pub fn profile(&self) -> Profile {
        self.read_pending_timestamps();
        let p = self.profile.lock().unwrap();
        let wall = p.started.elapsed();
        let gpu_ns: f64 = p.kernels.iter().map(|(_, k)| k.ns).sum();
        let timed = self.has_timestamps();
        let mut kernels: Vec<KernelRow> = p
            .kernels
            .iter()
            .map(|(name, k)| {
                let rate = |x: f64| (timed && k.ns > 0.0 && x > 0.0).then(|| x / k.ns);
                KernelRow {
                    kernel: name.clone(),
                    calls: k.calls,
                    total_ms: k.ns / 1e6,
                    share: if gpu_ns > 0.0 { k.ns / gpu_ns } else { 0.0 },
                    gflops: rate(k.work.flops),
                    gbps: rate(k.work.bytes),
                }
            })
            .collect();
        kernels.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then(b.calls.cmp(&a.calls)));
        // Phases share the wall time since profiling started; what no phase covers is host work
        // (loading, setup, between phases).
        let span = wall;
        let mut phases: Vec<PhaseRow> = p
            .phases
            .iter()
            .map(|(name, calls, d)| PhaseRow {
                phase: name.to_string(),
                calls: *calls,
                total_s: d.as_secs_f64(),
                share: d.as_secs_f64() / span.as_secs_f64().max(1e-9),
            })
            .collect();
        let covered: f64 = phases.iter().map(|r| r.total_s).sum();
        let other = (span.as_secs_f64() - covered).max(0.0);
        phases.push(PhaseRow {
            phase: "other host work".into(),
            calls: 1,
            total_s: other,
            share: other / span.as_secs_f64().max(1e-9),
        });
        let (iterations, counts) =
            if p.iterations > 0 { (p.iterations, p.iteration_counts) } else { (1, self.counts() - p.start_counts) };
        let per = |x: u64| x as f64 / iterations as f64;
        Profile {
            adapter: self.info.name.clone(),
            cpu: super::cpu_model(),
            timestamps: timed,
            lost_submits: p.lost,
            gpu_ms: gpu_ns / 1e6,
            kernels,
            wall_s: span.as_secs_f64(),
            // A command without a loop (generate, update) counts as one iteration.
            iteration_s: if p.iterations > 0 {
                p.iteration_wall.as_secs_f64() / p.iterations as f64
            } else {
                wall.as_secs_f64()
            },
            iterations,
            phases,
            per_iteration: PerIteration {
                dispatches: per(counts.dispatches),
                submits: per(counts.submits),
                readbacks: per(counts.readbacks),
            },
            trace: p.trace_events(self.queue.get_timestamp_period() as f64),
        }
    }
}

/// The guard of `Gpu::phase`.
pub struct Phase<'g> {
    gpu: &'g Gpu,
    name: &'static str,
    started: Instant,
    profiled: bool,
}

impl Phase<'_> {
    /// Ends the phase; its wall-clock seconds.
    pub fn finish(self) -> f32 {
        self.started.elapsed().as_secs_f32()
    }
}

impl Drop for Phase<'_> {
    fn drop(&mut self) {
        if !self.profiled {
            return;
        }
        let (started, took) = (self.started, self.started.elapsed());
        let mut p = self.gpu.profile.lock().unwrap();
        match p.phases.iter_mut().find(|(n, _, _)| *n == self.name) {
            Some((_, calls, total)) => {
                *calls += 1;
                *total += took;
            }
            None => p.phases.push((self.name, 1, took)),
        }
        let ts = started.saturating_duration_since(p.trace_origin).as_secs_f64() * 1e6;
        let event = TraceEvent {
            name: self.name.to_string(),
            cat: "phase",
            ph: "X",
            ts,
            dur: took.as_secs_f64() * 1e6,
            pid: HOST_TRACK,
            tid: 0,
        };
        p.push_event(event);
    }
}

/// The guard of `Gpu::iteration`.
pub struct Iteration<'g> {
    gpu: &'g Gpu,
    started: Option<Instant>,
    counts: Counts,
}

impl Drop for Iteration<'_> {
    fn drop(&mut self) {
        let Some(started) = self.started else { return };
        // This iteration's kernels, in its totals and (the traced one) its trace.
        self.gpu.read_pending_timestamps();
        let counts = self.gpu.counts() - self.counts;
        let mut p = self.gpu.profile.lock().unwrap();
        p.iteration_wall += started.elapsed();
        p.iteration_counts = p.iteration_counts + counts;
        p.iterations += 1;
        // The trace holds this iteration until the next one that `iteration` lets replace it
        // (only the second does).
        p.tracing = false;
    }
}

/// GPU time of one kernel entry point (`shader:entry`).
#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    pub kernel: String,
    pub calls: u64,
    pub total_ms: f64,
    /// Of the GPU time of all kernels.
    pub share: f64,
    /// Achieved rates from the kernel module's stated work (None where it states none, or
    /// without timestamps).
    pub gflops: Option<f64>,
    pub gbps: Option<f64>,
}

/// Wall-clock time of one phase of the host loop.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseRow {
    pub phase: String,
    pub calls: u64,
    pub total_s: f64,
    /// Of the wall time since profiling started.
    pub share: f64,
}

/// Host↔GPU traffic per iteration.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PerIteration {
    pub dispatches: f64,
    pub submits: f64,
    pub readbacks: f64,
}

/// What `--profile` prints and `--profile-out` writes.
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub adapter: String,
    pub cpu: String,
    /// Whether kernels were timed (the adapter's TIMESTAMP_QUERY).
    pub timestamps: bool,
    /// Submits whose timestamps could not be read back (their kernels are missing above).
    pub lost_submits: usize,
    pub gpu_ms: f64,
    pub kernels: Vec<KernelRow>,
    /// Wall time since profiling started.
    pub wall_s: f64,
    /// Mean wall time of one iteration (when the run has iterations).
    pub iteration_s: f64,
    pub iterations: usize,
    pub phases: Vec<PhaseRow>,
    pub per_iteration: PerIteration,
    #[serde(skip)]
    trace: Vec<TraceEvent>,
}

impl Profile {
    /// The report as text: the kernels by GPU time, the phases, the counts per iteration.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let how = if self.timestamps {
            "timestamp queries, one compute pass per dispatch while profiling"
        } else {
            "no timestamp queries on this adapter: kernels counted, not timed"
        };
        s += &format!("GPU time per kernel on {} (CPU {}; {how})\n", self.adapter, self.cpu);
        s += &format!(
            "  {:<44} {:>8} {:>11} {:>7} {:>9} {:>8}\n",
            "kernel", "calls", "total ms", "share", "GFLOP/s", "GB/s"
        );
        let rate = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
        for k in &self.kernels {
            s += &format!(
                "  {:<44} {:>8} {:>11.2} {:>6.1}% {:>9} {:>8}\n",
                k.kernel,
                k.calls,
                k.total_ms,
                100.0 * k.share,
                rate(k.gflops),
                rate(k.gbps)
            );
        }
        s += &format!(
            "  {:<44} {:>8} {:>11.2}\n",
            "all kernels",
            self.kernels.iter().map(|k| k.calls).sum::<u64>(),
            self.gpu_ms
        );
        if self.lost_submits > 0 {
            s += &format!("  ({} submits' timestamps could not be read back)\n", self.lost_submits);
        }
        let plural = if self.iterations == 1 { "" } else { "s" };
        s += &format!(
            "wall-clock per phase ({:.2} s in all; {} iteration{plural} of {:.3} s)\n",
            self.wall_s, self.iterations, self.iteration_s
        );
        s += &format!("  {:<44} {:>8} {:>11} {:>7}\n", "phase", "calls", "total s", "share");
        for p in &self.phases {
            s += &format!("  {:<44} {:>8} {:>11.3} {:>6.1}%\n", p.phase, p.calls, p.total_s, 100.0 * p.share);
        }
        let c = &self.per_iteration;
        s += &format!(
            "per iteration: {:.1} dispatches, {:.1} submits, {:.1} readbacks\n",
            c.dispatches, c.submits, c.readbacks
        );
        s
    }

    /// The Chrome trace of the traced iteration: phases on the host track, kernels on the GPU
    /// track (its clock aligned to the host's at the end of each submit).
    pub fn trace_json(&self) -> String {
        let names = [(HOST_TRACK, "host (phases)"), (GPU_TRACK, "GPU (kernels)")].map(|(pid, name)| {
            serde_json::json!({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": name}})
        });
        let mut events: Vec<serde_json::Value> = names.into_iter().collect();
        events.extend(self.trace.iter().map(|e| serde_json::to_value(e).expect("trace events serialise")));
        serde_json::json!({"traceEvents": events, "displayTimeUnit": "ms"}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::MAX_PENDING_SUBMITS;
    use crate::gpu::{DType, Gpu, Recorder};

    #[test]
    fn a_profiled_submit_leaves_its_timestamps_to_the_next_wait() {
        // Submits while profiling hand their timestamps over unread, so that the GPU can run
        // ahead of the host; a wait reads them all, and each GELU is timed once. Held back
        // without a wait, the submits read theirs every MAX_PENDING_SUBMITS.
        let gpu = Gpu::new(None).unwrap();
        assert!(gpu.has_timestamps(), "{} has no timestamp queries", gpu.describe());
        let n = 1 << 16;
        let (x, y) = (gpu.upload(&[n], &vec![0.5f32; n]).unwrap(), gpu.tensor(&[n], DType::F32).unwrap());
        let pending = || gpu.pending_timed.lock().unwrap().len();
        let gelu_calls = |gpu: &Gpu| {
            let profile = gpu.profile();
            assert_eq!(profile.lost_submits, 0);
            let gelu =
                profile.kernels.iter().find(|k| k.kernel == "gelu:gelu_forward4").expect("the GELUs are profiled");
            assert!(gelu.total_ms > 0.0, "timed: {gelu:?}");
            gelu.calls
        };
        gpu.start_profiling();
        for submitted in 1..=2 {
            let mut rec = Recorder::new(&gpu);
            crate::kernels::gelu::gelu_forward(&mut rec, &y, &x).unwrap();
            rec.submit();
            assert_eq!(pending(), submitted, "a submit does not read its own timestamps");
        }
        gpu.wait().unwrap();
        assert_eq!(pending(), 0, "a wait reads them");
        assert_eq!(gelu_calls(&gpu), 2);

        gpu.start_profiling();
        for _ in 0..2 * MAX_PENDING_SUBMITS + 1 {
            let mut rec = Recorder::new(&gpu);
            crate::kernels::gelu::gelu_forward(&mut rec, &y, &x).unwrap();
            rec.submit();
            assert!(pending() < MAX_PENDING_SUBMITS, "{} submits unread", pending());
        }
        assert_eq!(gelu_calls(&gpu), 2 * MAX_PENDING_SUBMITS as u64 + 1, "the report reads the rest");
    }
}
