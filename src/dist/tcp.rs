//! Replicas as separate processes, on one machine or several, joined over
//! TCP: how every process of a launched run finds the others ([`Tcp::join`]
//! with a [`Launch`] read from the environment), and the [`Comm`] that
//! trains over those connections when the backend is the CPU or the
//! emulator (on GPUs the same connections only carry NCCL's group id).
//!
//! The group is a star around rank 0: rank 0 listens on `MASTER_PORT`,
//! every other rank connects to `MASTER_ADDR:MASTER_PORT` and says who it
//! is and which command it runs (a checksum of its arguments: every process
//! of a run must run the same command). Each collective is one exchange,
//! with the semantics of [`super::InProcess`]: every rank sends rank 0 the
//! name of the collective and its bytes; rank 0 checks that all are in the
//! same collective, computes the result in rank order (the sum of an
//! all-reduce: rank 0's values plus rank 1's plus ...), and sends it back.
//! Every rank therefore gets the same bits as with in-process replicas.
//!
//! A process that exits closes its connections, which turns the next
//! collective of every other rank into an error: a run stops, it does not
//! hang. A collective waits as long as the slowest rank takes to reach it
//! (rank 0 evaluating, say), so it has no timeout of its own; joining does.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::{check_all_reduce, floats, sum_in_rank_order, Comm, CommStats};
use crate::mem::View;
use crate::ops::{Backend, BackendExt};

/// How long a process waits for the others to join, unless
/// `DYNTIE_JOIN_TIMEOUT_S` says otherwise.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's place in a run launched as several processes, from the
/// variables torchrun (and most cluster launchers) set for each process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// `RANK`: this process's rank, `0..world_size`.
    pub rank: usize,
    /// `WORLD_SIZE`: how many processes train together.
    pub world_size: usize,
    /// `LOCAL_RANK`: which GPU of this machine this process uses (0 when
    /// unset).
    pub local_rank: usize,
    /// `MASTER_ADDR`: the host of rank 0, as the other machines reach it.
    pub master_addr: String,
    /// `MASTER_PORT`: the port rank 0 listens on.
    pub master_port: u16,
}

impl Launch {
    /// The launch this process is part of, or `None` for a run of its own
    /// (no `WORLD_SIZE`, or `WORLD_SIZE=1` with `RANK` 0).
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Launch::from_env`] over any source of variables (for tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let number = |name: &str| -> Result<Option<usize>> {
            get(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        anyhow!("{name}={v} is not a whole number (it is set by the launcher)")
                    })
                })
                .transpose()
        };
        let Some(world_size) = number("WORLD_SIZE")? else {
            if let Some(rank) = get("RANK").filter(|r| r.trim() != "0") {
                bail!("RANK={rank} is set but WORLD_SIZE is not: set both (a launcher such as torchrun sets both), or unset RANK");
            }
            return Ok(None);
        };
        ensure!(
            world_size >= 1,
            "WORLD_SIZE=0: a run needs at least one process"
        );
        let rank = number("RANK")?.unwrap_or(0);
        ensure!(
            rank < world_size,
            "RANK={rank} with WORLD_SIZE={world_size}: ranks are 0..{world_size}"
        );
        if world_size == 1 {
            return Ok(None);
        }
        let local_rank = number("LOCAL_RANK")?.unwrap_or(0);
        let master_addr = get("MASTER_ADDR")
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .context(
                "WORLD_SIZE is set but MASTER_ADDR is not: set it to the host of rank 0 \
                 (an address every machine of the run can reach)",
            )?;
        let port = get("MASTER_PORT").context(
            "WORLD_SIZE is set but MASTER_PORT is not: set it to a free port on rank 0's host",
        )?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .with_context(|| format!("MASTER_PORT={port} is not a port number (1..65535)"))?;
        Ok(Some(Launch {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        }))
    }

    /// The join timeout: `DYNTIE_JOIN_TIMEOUT_S` or [`DEFAULT_JOIN_TIMEOUT`].
    pub fn join_timeout() -> Result<Duration> {
        match std::env::var("DYNTIE_JOIN_TIMEOUT_S") {
            Err(_) => Ok(DEFAULT_JOIN_TIMEOUT),
            Ok(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64)
                .with_context(|| {
                    format!("DYNTIE_JOIN_TIMEOUT_S={v} is not a positive number of seconds")
                }),
        }
    }
}

/// What a joining process sends first.
const HELLO: &[u8; 12] = b"dyntie-join1";

/// One rank of a group of processes joined over TCP.
pub struct Tcp {
    rank: usize,
    world_size: usize,
    /// Rank 0: the connection of each rank `1..world_size` (index r-1).
    /// Other ranks: the one connection to rank 0.
    links: Mutex<Vec<TcpStream>>,
    stats: Mutex<CommStats>,
}

impl Tcp {
    /// Joins the group of `launch`: rank 0 waits for every other rank,
    /// the others connect to it (retrying until it listens). `command` is
    /// a checksum of the command every process must share. Fails after
    /// `timeout` naming the ranks that did not come.
    pub fn join(launch: &Launch, command: u64, timeout: Duration) -> Result<Tcp> {
        let deadline = Instant::now() + timeout;
        let links = if launch.rank == 0 {
            accept_all(launch, command, deadline, timeout)?
        } else {
            vec![connect(launch, command, deadline, timeout)?]
        };
        Ok(Tcp {
            rank: launch.rank,
            world_size: launch.world_size,
            links: Mutex::new(links),
            stats: Mutex::new(CommStats::default()),
        })
    }

    /// Makes every rank's `bytes` rank `root`'s, without a backend (what
    /// [`Comm::broadcast`] does; also used before any backend exists).
    pub fn broadcast_bytes(&self, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        ensure!(
            root < self.world_size,
            "broadcast from rank {root}, but the group has {} ranks",
            self.world_size
        );
        let mine = if self.rank == root {
            std::mem::take(bytes)
        } else {
            Vec::new()
        };
        *bytes = self.exchange(&format!("broadcast from rank {root}"), mine, |all| {
            Ok(all[root].clone())
        })?;
        self.stats.lock().unwrap().broadcasts += 1;
        Ok(())
    }

    /// One collective: sends `name` and `bytes` to rank 0, which checks
    /// that every rank is in the same collective and answers every rank
    /// with `combine` of all the bytes in rank order.
    fn exchange(
        &self,
        name: &str,
        bytes: Vec<u8>,
        combine: impl Fn(&[Vec<u8>]) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut links = self.links.lock().unwrap();
        if self.rank != 0 {
            let link = &mut links[0];
            let sent = write_frame(link, name.as_bytes()).and_then(|_| write_frame(link, &bytes));
            sent.and_then(|_| read_reply(link))
                .map_err(|e| left_or(e, 0))
                .with_context(|| format!("rank {}: {name}", self.rank))?
                .map_err(|why| anyhow!("rank {}: {name}: {why}", self.rank))
        } else {
            let mut all = vec![bytes];
            let mut problem = None;
            for (i, link) in links.iter_mut().enumerate() {
                let rank = i + 1;
                let frame = read_frame(link).and_then(|n| Ok((n, read_frame(link)?)));
                match frame {
                    Ok((other, data)) => {
                        if other != name.as_bytes() && problem.is_none() {
                            problem = Some(format!(
                                "replicas out of step: rank 0 called {name} while rank {rank} \
                                 called {}",
                                String::from_utf8_lossy(&other)
                            ));
                        }
                        all.push(data);
                    }
                    Err(e) => {
                        // The others learn it from rank 0 leaving.
                        return Err(left_or(e, rank)).with_context(|| format!("rank 0: {name}"));
                    }
                }
            }
            let result = match problem {
                Some(p) => Err(p),
                None => combine(&all).map_err(|e| format!("{e:#}")),
            };
            for (i, link) in links.iter_mut().enumerate() {
                write_reply(link, &result)
                    .map_err(|e| left_or(e, i + 1))
                    .with_context(|| format!("rank 0: {name}"))?;
            }
            result.map_err(|why| anyhow!("rank 0: {name}: {why}"))
        }
    }
}

impl Comm for Tcp {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, be: &dyn Backend, buf: View) -> Result<()> {
        check_all_reduce(buf)?;
        let mine = be.download::<f32>(buf)?;
        let sum = self.exchange(
            &format!("all-reduce of {} floats", buf.len),
            bytemuck::cast_slice(&mine).to_vec(),
            |all| {
                // Rank order: the bits of in-process replicas.
                Ok(bytemuck::cast_slice(&sum_in_rank_order(all)).to_vec())
            },
        )?;
        be.upload(buf, &floats(&sum))?;
        let mut stats = self.stats.lock().unwrap();
        stats.all_reduces += 1;
        stats.all_reduce_bytes += buf.bytes() as u64;
        Ok(())
    }

    fn broadcast(&self, _be: &dyn Backend, root: usize, bytes: &mut Vec<u8>) -> Result<()> {
        self.broadcast_bytes(root, bytes)
    }

    fn barrier(&self) -> Result<()> {
        self.exchange("barrier", Vec::new(), |_| Ok(Vec::new()))
            .map(|_| ())
    }

    fn stats(&self) -> CommStats {
        *self.stats.lock().unwrap()
    }
}

/// Rank 0: listens on the port and takes every other rank's connection,
/// checking who it is and what it runs.
fn accept_all(
    launch: &Launch,
    command: u64,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<TcpStream>> {
    let port = launch.master_port;
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| {
        format!(
            "rank 0 cannot listen on port {port} (MASTER_PORT): another program uses it, or \
             it needs privileges; give the run another MASTER_PORT"
        )
    })?;
    listener.set_nonblocking(true)?;
    let others = launch.world_size - 1;
    let mut joined: Vec<Option<TcpStream>> = (0..others).map(|_| None).collect();
    let refuse = |joined: &mut Vec<Option<TcpStream>>, why: String| -> anyhow::Error {
        for link in joined.iter_mut().flatten() {
            let _ = write_reply(link, &Err(why.clone()));
        }
        anyhow!("{why}")
    };
    while joined.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut link, from)) => {
                link.set_nonblocking(false)?;
                link.set_nodelay(true)?;
                link.set_read_timeout(Some(Duration::from_secs(10)))?;
                let Ok((world, rank, theirs)) = read_hello(&mut link) else {
                    // Not one of ours (a port scanner, a stale client): ignore it.
                    continue;
                };
                let why = if world != launch.world_size {
                    Some(format!(
                        "rank {rank} (from {from}) was launched with WORLD_SIZE={world}, rank 0 \
                         with {}: launch every process of the run with the same WORLD_SIZE",
                        launch.world_size
                    ))
                } else if rank == 0 || rank >= world {
                    Some(format!(
                        "a process from {from} says it is rank {rank}: the other ranks are \
                         1..{world}"
                    ))
                } else if joined[rank - 1].is_some() {
                    Some(format!(
                        "two processes say they are rank {rank} (one from {from}): give each \
                         process its own RANK"
                    ))
                } else if theirs != command {
                    Some(format!(
                        "rank {rank} (from {from}) runs another command than rank 0: every \
                         process of a run must run the same dyntie command with the same \
                         arguments"
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    let _ = write_reply(&mut link, &Err(why.clone()));
                    return Err(refuse(&mut joined, why));
                }
                link.set_read_timeout(None)?;
                joined[rank - 1] = Some(link);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<String> = joined
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    let why = format!(
                        "rank 0 waited {:.0} s on port {port} but rank(s) {} of {} did not \
                         join: start them with the same WORLD_SIZE, MASTER_ADDR and \
                         MASTER_PORT (rank 0's host must be reachable on that port), or set \
                         DYNTIE_JOIN_TIMEOUT_S to wait longer",
                        timeout.as_secs_f64(),
                        missing.join(", "),
                        launch.world_size
                    );
                    return Err(refuse(&mut joined, why));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("rank 0 cannot accept connections"),
        }
    }
    let mut links: Vec<TcpStream> = joined.into_iter().flatten().collect();
    for link in &mut links {
        write_reply(link, &Ok(Vec::new())).context("rank 0: cannot answer a joining rank")?;
    }
    Ok(links)
}

/// Any other rank: connects to rank 0 (retrying while it is not listening
/// yet) and waits until the whole group has joined.
fn connect(
    launch: &Launch,
    command: u64,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream> {
    let place = format!("{}:{}", launch.master_addr, launch.master_port);
    let mut link = loop {
        match TcpStream::connect(&place) {
            Ok(link) => break link,
            Err(e) => {
                if Instant::now() >= deadline {
                    bail!(
                        "rank {} could not reach rank 0 at {place} (MASTER_ADDR:MASTER_PORT) \
                         within {:.0} s: {e}; start rank 0, check the address and that the port \
                         is open, or set DYNTIE_JOIN_TIMEOUT_S to wait longer",
                        launch.rank,
                        timeout.as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    link.set_nodelay(true)?;
    let mut hello = HELLO.to_vec();
    for v in [launch.world_size as u64, launch.rank as u64, command] {
        hello.extend_from_slice(&v.to_le_bytes());
    }
    link.write_all(&hello)
        .with_context(|| format!("rank {}: cannot greet rank 0 at {place}", launch.rank))?;
    // Rank 0 answers once every rank has joined, or its own deadline passed.
    link.set_read_timeout(Some(timeout + Duration::from_secs(30)))?;
    let answer = read_reply(&mut link)
        .map_err(|e| left_or(e, 0))
        .with_context(|| format!("rank {}: joining the run at {place}", launch.rank))?;
    answer.map_err(|why| anyhow!("rank 0 refused rank {}: {why}", launch.rank))?;
    link.set_read_timeout(None)?;
    Ok(link)
}

/// Reads a joining rank's greeting: (world size, rank, command checksum).
fn read_hello(link: &mut TcpStream) -> Result<(usize, usize, u64)> {
    let mut hello = [0u8; 12 + 24];
    link.read_exact(&mut hello)?;
    ensure!(&hello[..12] == HELLO, "not a dyntie process");
    let word = |i: usize| u64::from_le_bytes(hello[12 + 8 * i..20 + 8 * i].try_into().unwrap());
    Ok((word(0) as usize, word(1) as usize, word(2)))
}

fn write_frame(link: &mut TcpStream, bytes: &[u8]) -> Result<()> {
    link.write_all(&(bytes.len() as u64).to_le_bytes())?;
    link.write_all(bytes)?;
    Ok(())
}

fn read_frame(link: &mut TcpStream) -> Result<Vec<u8>> {
    let mut len = [0u8; 8];
    link.read_exact(&mut len)?;
    let len = usize::try_from(u64::from_le_bytes(len))?;
    let mut bytes = vec![0u8; len];
    link.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Rank 0's answer: the result, or why the collective failed.
fn write_reply(link: &mut TcpStream, reply: &std::result::Result<Vec<u8>, String>) -> Result<()> {
    match reply {
        Ok(bytes) => {
            link.write_all(&[0])?;
            write_frame(link, bytes)
        }
        Err(why) => {
            link.write_all(&[1])?;
            write_frame(link, why.as_bytes())
        }
    }
}

fn read_reply(link: &mut TcpStream) -> Result<std::result::Result<Vec<u8>, String>> {
    let mut status = [0u8; 1];
    link.read_exact(&mut status)?;
    let bytes = read_frame(link)?;
    Ok(match status[0] {
        0 => Ok(bytes),
        _ => Err(String::from_utf8_lossy(&bytes).into_owned()),
    })
}

/// A broken connection to `rank` said plainly: it exited (perhaps with an
/// error of its own) and left the group.
fn left_or(e: anyhow::Error, rank: usize) -> anyhow::Error {
    let closed = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
        matches!(
            io.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        )
    });
    if closed {
        anyhow!("rank {rank} left the group (its process ended; its own output says why)")
    } else {
        e.context(format!("the connection to rank {rank} failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_launch_contract_is_read_and_checked() {
        assert_eq!(Launch::from_vars(vars(&[])).unwrap(), None);
        assert_eq!(
            Launch::from_vars(vars(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(),
            None
        );
        let l = Launch::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (
                l.rank,
                l.world_size,
                l.local_rank,
                l.master_addr.as_str(),
                l.master_port
            ),
            (3, 4, 1, "node0", 29500)
        );
        let err = |pairs: &[(&str, &str)]| Launch::from_vars(vars(pairs)).unwrap_err().to_string();
        assert!(err(&[("RANK", "2")]).contains("WORLD_SIZE is not"));
        assert!(err(&[("WORLD_SIZE", "two")]).contains("not a whole number"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "2")]).contains("ranks are 0..2"));
        assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "1")]).contains("MASTER_ADDR"));
        let no_port = err(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "h")]);
        assert!(no_port.contains("MASTER_PORT"), "{no_port}");
        let bad_port = err(&[
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ]);
        assert!(bad_port.contains("not a port"), "{bad_port}");
    }

    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn launch(rank: usize, world_size: usize, port: u16) -> Launch {
        Launch {
            rank,
            world_size,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    /// Joins `n` ranks on threads, rank `r` announcing `command(r)`.
    fn join_all(n: usize, command: impl Fn(usize) -> u64) -> Vec<Result<Tcp>> {
        let port = free_port();
        let handles: Vec<_> = (0..n)
            .map(|r| {
                let l = launch(r, n, port);
                let c = command(r);
                std::thread::spawn(move || Tcp::join(&l, c, Duration::from_secs(20)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn collectives_give_every_rank_the_in_process_bits() {
        use crate::cpu::CpuBackend;
        use crate::mem::DType;
        let group: Vec<Tcp> = join_all(3, |_| 7).into_iter().map(Result::unwrap).collect();
        let values =
            |r: usize| -> Vec<f32> { (0..5).map(|i| 0.1 * (i + 7 * r) as f32 + 1e-3).collect() };
        let handles: Vec<_> = group
            .into_iter()
            .enumerate()
            .map(|(r, comm)| {
                std::thread::spawn(move || {
                    let be = CpuBackend::new();
                    let buf = be.alloc(DType::F32, 5).unwrap();
                    be.upload(buf.view(), &values(r)).unwrap();
                    comm.all_reduce_sum(&be, buf.view()).unwrap();
                    let mut msg = if r == 2 { b"from two".to_vec() } else { vec![] };
                    comm.broadcast(&be, 2, &mut msg).unwrap();
                    comm.barrier().unwrap();
                    let stats = comm.stats();
                    (be.download::<f32>(buf.view()).unwrap(), msg, stats)
                })
            })
            .collect();
        let expected: Vec<f32> = (0..5)
            .map(|i| values(0)[i] + values(1)[i] + values(2)[i])
            .collect();
        for h in handles {
            let (sum, msg, stats) = h.join().unwrap();
            assert_eq!(sum, expected, "bit for bit, rank order");
            assert_eq!(msg, b"from two");
            assert_eq!(
                (stats.all_reduces, stats.all_reduce_bytes, stats.broadcasts),
                (1, 20, 1)
            );
        }
    }

    #[test]
    fn a_process_with_another_command_or_a_missing_one_is_named() {
        let results = join_all(3, |r| if r == 2 { 8 } else { 7 });
        let rank0 = results[0]
            .as_ref()
            .err()
            .expect("rank 0 refuses")
            .to_string();
        assert!(
            rank0.contains("rank 2") && rank0.contains("same dyntie command"),
            "{rank0}"
        );
        let rank2 = format!(
            "{:#}",
            results[2].as_ref().err().expect("rank 2 is refused")
        );
        assert!(rank2.contains("refused rank 2"), "{rank2}");

        let port = free_port();
        let err = Tcp::join(&launch(0, 2, port), 7, Duration::from_millis(300))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("rank(s) 1 of 2 did not join"), "{err}");
    }

    #[test]
    fn a_rank_that_leaves_turns_the_next_collective_into_an_error() {
        let mut group: Vec<Tcp> = join_all(2, |_| 7).into_iter().map(Result::unwrap).collect();
        let peer = group.pop().unwrap();
        drop(peer);
        let mut bytes = vec![1, 2, 3];
        let err = format!("{:#}", group[0].broadcast_bytes(0, &mut bytes).unwrap_err());
        assert!(err.contains("rank 1 left the group"), "{err}");
    }

    #[test]
    fn ranks_in_different_collectives_all_fail() {
        let group: Vec<Tcp> = join_all(2, |_| 7).into_iter().map(Result::unwrap).collect();
        let handles: Vec<_> = group
            .into_iter()
            .enumerate()
            .map(|(r, comm)| {
                std::thread::spawn(move || {
                    if r == 0 {
                        comm.barrier().map(|_| ())
                    } else {
                        comm.broadcast_bytes(0, &mut vec![]).map(|_| ())
                    }
                })
            })
            .collect();
        for h in handles {
            let err = h.join().unwrap().unwrap_err().to_string();
            assert!(err.contains("out of step"), "{err}");
        }
    }
}
