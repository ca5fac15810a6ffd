//! The training step as one graph: captured once, replayed every step.
//!
//! A step queues a few hundred kernels; launched one by one, each costs the
//! host a driver call and the GPU a gap whenever the host falls behind. The
//! kernel backend instead records a step once (on a GPU as a CUDA graph,
//! by stream capture; under the emulator as the list of its launches) and
//! from then on launches the recording in one call.
//!
//! What makes replaying safe is that the host still runs the step's code
//! every step: each launch it would make is compared with the recorded one
//! (kernel, geometry, every argument word), and each queued upload with the
//! recorded one (destination and length) whose bytes go into the graph's
//! own pinned input buffer. Only when the whole step matched is the graph
//! launched. At the first difference (a re-tied block's weights at another
//! address, a reallocated arena, anything else baked into an argument) the
//! matched prefix is launched one by one from the recording, the rest of
//! the step runs as usual, the graph is dropped, and the next step captures
//! a new one ([`GraphCounts::fallbacks`]). Anything that changes from step
//! to step must therefore reach the kernels as data in device memory (the
//! learning rate and the step count: the step statistics of AdamW, written
//! by a queued upload) rather than as a launch argument, or every step
//! falls back.
//!
//! A step is captured only after one that ran as usual (it allocated its
//! buffers and uploaded what it waits for, e.g. AdamW's tensor list): a
//! captured step must not wait for the device, which the backend refuses
//! while capturing. The synchronous debug mode (`DYNTIE_SYNC_LAUNCHES`)
//! runs every step as usual.

use super::device::{Device, Fence};
use super::launch::{Args, LaunchDims};
use crate::ops::{GraphCounts, GraphStep};
use anyhow::{bail, Result};

/// One piece of recorded work, in queue order.
enum Work {
    Launch {
        kernel: &'static str,
        dims: LaunchDims,
        /// Boxed: the inline argument words are over a kilobyte.
        args: Box<Args>,
    },
    /// A queued upload from the graph's pinned input buffer `input`.
    Upload {
        dst: u64,
        bytes: usize,
        input: usize,
    },
}

/// A captured step: its work, its pinned input buffers (address, bytes),
/// and the fence after its last launch.
struct Recording {
    work: Vec<Work>,
    inputs: Vec<(u64, usize)>,
    launched: Option<Fence>,
}

impl Recording {
    /// Queues `work` on the device one piece at a time.
    fn run(&self, device: &dyn Device, work: &[Work]) -> Result<()> {
        for w in work {
            match w {
                Work::Launch { kernel, dims, args } => {
                    let mut args = Args::clone(args);
                    let mut ptrs = args.pointers();
                    // SAFETY: checked against the kernel's declaration when
                    // it was recorded, with the same buffers still live (the
                    // host issued the very same launch this step).
                    unsafe { device.launch(kernel, *dims, &mut ptrs[..args.len()]) }?;
                }
                Work::Upload { dst, bytes, input } => {
                    // SAFETY: the input buffer holds `bytes` of this step's
                    // bytes and is freed only after a synchronize.
                    unsafe { device.copy_htod_async(*dst, self.inputs[*input].0, *bytes) }?;
                }
            }
        }
        Ok(())
    }

    fn free(self, device: &dyn Device) {
        for (addr, bytes) in self.inputs {
            device.free_pinned(addr, bytes);
        }
    }
}

/// Where the step in progress stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between steps, or a step outside the graph.
    Idle,
    /// A step that runs as usual (and warms the next one up for capture).
    Eager,
    Capturing,
    /// Comparing the host's work with the recording; `next` matched so far.
    Checking {
        next: usize,
    },
}

/// What the caller does with a launch or an upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Run it as usual.
    Run,
    /// Recorded or matched: nothing more to do.
    Done,
}

pub struct StepGraph {
    phase: Phase,
    /// The current graph, or the one being captured.
    graph: Option<Recording>,
    /// Whether the device captures graphs itself (CUDA) or the recording is
    /// replayed launch by launch (the emulator).
    native: bool,
    /// Dropped graphs whose input buffers queued copies may still read;
    /// freed at the next capture, after a synchronize.
    dropped: Vec<Recording>,
    /// The last step ran as usual to its end: the next may be captured.
    warm: bool,
    /// Whether this step fell back from a replay.
    fell_back: bool,
    counts: GraphCounts,
}

impl StepGraph {
    pub fn new(native: bool) -> Self {
        StepGraph {
            phase: Phase::Idle,
            graph: None,
            native,
            dropped: Vec::new(),
            warm: false,
            fell_back: false,
            counts: GraphCounts::default(),
        }
    }

    pub fn counts(&self) -> GraphCounts {
        self.counts
    }

    /// Starts a step: replays the graph if there is one, captures one after
    /// a step that ran as usual, else runs as usual.
    pub fn begin(&mut self, device: &dyn Device) -> Result<GraphStep> {
        if self.phase != Phase::Idle {
            bail!("a graph step was begun inside another");
        }
        self.fell_back = false;
        if let Some(graph) = &self.graph {
            // Its input buffers are rewritten now: the last replay must
            // have read them (in a training run it has long finished).
            if let Some(fence) = graph.launched {
                device.wait_fence(fence)?;
            }
            self.phase = Phase::Checking { next: 0 };
            return Ok(GraphStep::Replayed);
        }
        if !self.warm {
            self.phase = Phase::Eager;
            return Ok(GraphStep::Eager);
        }
        if !self.dropped.is_empty() {
            device.synchronize()?;
            for g in self.dropped.drain(..) {
                g.free(device);
            }
        }
        if self.native {
            device.begin_capture()?;
        }
        self.graph = Some(Recording {
            work: Vec::new(),
            inputs: Vec::new(),
            launched: None,
        });
        self.phase = Phase::Capturing;
        Ok(GraphStep::Captured)
    }

    /// A kernel launch of the step.
    pub fn on_launch(
        &mut self,
        device: &dyn Device,
        kernel: &'static str,
        dims: LaunchDims,
        args: &Args,
    ) -> Result<Handled> {
        match self.phase {
            Phase::Idle | Phase::Eager => Ok(Handled::Run),
            Phase::Capturing => {
                let graph = self.graph.as_mut().expect("capturing into a graph");
                graph.work.push(Work::Launch {
                    kernel,
                    dims,
                    args: Box::new(args.clone()),
                });
                // The GPU's stream capture records the launch itself.
                Ok(if self.native {
                    Handled::Run
                } else {
                    Handled::Done
                })
            }
            Phase::Checking { next } => {
                let graph = self.graph.as_ref().expect("checking against a graph");
                let same = matches!(
                    graph.work.get(next),
                    Some(Work::Launch { kernel: k, dims: d, args: a })
                        if *k == kernel && *d == dims && a.same_as(args)
                );
                if same {
                    self.phase = Phase::Checking { next: next + 1 };
                    Ok(Handled::Done)
                } else {
                    self.fall_back(device)?;
                    Ok(Handled::Run)
                }
            }
        }
    }

    /// A queued upload of the step.
    pub fn on_upload(&mut self, device: &dyn Device, dst: u64, src: &[u8]) -> Result<Handled> {
        match self.phase {
            Phase::Idle | Phase::Eager => Ok(Handled::Run),
            Phase::Capturing => {
                let graph = self.graph.as_mut().expect("capturing into a graph");
                let bytes = src.len();
                let addr = device.alloc_pinned(bytes)?;
                graph.inputs.push((addr, bytes));
                // SAFETY: `addr` was just allocated with `bytes` bytes.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, bytes) };
                if self.native {
                    // SAFETY: the input buffer lives as long as the graph
                    // and is rewritten only after the graph's last launch
                    // has run (`begin`).
                    unsafe { device.copy_htod_async(dst, addr, bytes) }?;
                }
                let input = graph.inputs.len() - 1;
                graph.work.push(Work::Upload { dst, bytes, input });
                Ok(Handled::Done)
            }
            Phase::Checking { next } => {
                let graph = self.graph.as_ref().expect("checking against a graph");
                match graph.work.get(next) {
                    Some(&Work::Upload {
                        dst: d,
                        bytes,
                        input,
                    }) if d == dst && bytes == src.len() => {
                        let addr = graph.inputs[input].0;
                        // SAFETY: the buffer holds `bytes`; `begin` waited
                        // for the last launch that read it.
                        unsafe {
                            std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, bytes)
                        };
                        self.phase = Phase::Checking { next: next + 1 };
                        Ok(Handled::Done)
                    }
                    _ => {
                        self.fall_back(device)?;
                        Ok(Handled::Run)
                    }
                }
            }
        }
    }

    /// The host is about to wait for the device (`what`): refused while
    /// capturing, a fall back while checking.
    pub fn on_wait(&mut self, device: &dyn Device, what: &str) -> Result<()> {
        match self.phase {
            Phase::Capturing => bail!(
                "{what} inside a captured training step: a captured step must not wait for the \
                 device; run with --no-graph and report this"
            ),
            Phase::Checking { .. } => self.fall_back(device),
            Phase::Idle | Phase::Eager => Ok(()),
        }
    }

    /// Ends the step: launches the graph when the step was captured or
    /// matched it whole.
    pub fn end(&mut self, device: &dyn Device) -> Result<GraphStep> {
        let phase = std::mem::replace(&mut self.phase, Phase::Idle);
        let outcome = match phase {
            Phase::Idle => bail!("a graph step was ended that was not begun"),
            Phase::Eager if self.fell_back => GraphStep::FellBack,
            Phase::Eager => GraphStep::Eager,
            Phase::Capturing => {
                if self.native {
                    device.end_capture()?;
                }
                self.counts.captures += 1;
                self.launch(device)?;
                GraphStep::Captured
            }
            Phase::Checking { next } => {
                let whole = self.graph.as_ref().is_some_and(|g| g.work.len() == next);
                if !whole {
                    // The host's step was shorter than the recording.
                    self.phase = Phase::Checking { next };
                    self.fall_back(device)?;
                    self.phase = Phase::Idle;
                    self.warm = true;
                    return Ok(GraphStep::FellBack);
                }
                self.counts.replays += 1;
                self.launch(device)?;
                GraphStep::Replayed
            }
        };
        self.warm = matches!(outcome, GraphStep::Eager | GraphStep::FellBack);
        Ok(outcome)
    }

    fn launch(&mut self, device: &dyn Device) -> Result<()> {
        let graph = self.graph.as_mut().expect("a graph to launch");
        if self.native {
            device.launch_graph()?;
        } else {
            graph.run(device, &graph.work)?;
        }
        graph.launched = Some(device.record_fence()?);
        Ok(())
    }

    /// The step differs from the recording: queues the matched part one by
    /// one, drops the graph and lets the rest of the step run as usual.
    fn fall_back(&mut self, device: &dyn Device) -> Result<()> {
        let Phase::Checking { next } = self.phase else {
            return Ok(());
        };
        self.phase = Phase::Eager;
        self.fell_back = true;
        self.counts.fallbacks += 1;
        let graph = self.graph.take().expect("checking against a graph");
        let result = graph.run(device, &graph.work[..next]);
        self.dropped.push(graph);
        result
    }

    /// Waits for all queued work and frees every graph's input buffers.
    pub fn release(&mut self, device: &dyn Device) -> Result<()> {
        let waited = device.synchronize();
        if waited.is_ok() {
            for g in self.dropped.drain(..).chain(self.graph.take()) {
                g.free(device);
            }
        }
        waited
    }
}
