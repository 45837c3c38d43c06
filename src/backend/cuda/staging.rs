//! Page-locked memory between the host and the GPU, so that copies do not block the host.
//!
//! A copy from pageable memory may wait for the stream to drain before it starts, which
//! would make the host wait for the batch in flight before it could queue the next one.
//! Uploads go through a small ring of page-locked buffers instead, each reused once the copy
//! out of it has landed (its event); downloads land in reused page-locked buffers and are
//! read once the event recorded after their copy has fired.
//!
//! The context runs with cudarc's event tracking off, so cudarc records no events for
//! page-locked buffers: every wait here is on an event recorded by this module.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};

/// Uploads in flight at once before the oldest buffer is waited for and reused: a few
/// batches' worth of tokens, record ids and ranges.
const RING: usize = 8;

/// A ring of page-locked upload buffers of one element type.
pub struct Uploads<T> {
    ring: Mutex<VecDeque<(PinnedHostSlice<T>, CudaEvent)>>,
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy> Uploads<T> {
    pub fn new() -> Self {
        Uploads { ring: Mutex::new(VecDeque::new()) }
    }

    /// A new device buffer holding `src`, copied asynchronously on `stream`.
    pub fn upload(&self, ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>, src: &[T]) -> Result<CudaSlice<T>> {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let mut host = match ring.len() < RING {
            true => None,
            false => {
                let (host, copied) = ring.pop_front().expect("a full ring");
                copied.synchronize().context("waiting for an upload buffer")?;
                Some(host)
            }
        };
        if host.as_ref().is_none_or(|h| h.len() < src.len()) {
            // write-combined: the host only writes these
            // SAFETY: written below before any copy reads it
            host = Some(unsafe { ctx.alloc_pinned::<T>(src.len().next_power_of_two().max(1024)) }.context("page-locked upload memory")?);
        }
        let mut host = host.expect("set above");
        host.as_mut_slice()?[..src.len()].copy_from_slice(src);
        // SAFETY: fully written by the copy below, in stream order before any reader
        let mut dev = unsafe { stream.alloc::<T>(src.len()) }?;
        stream.memcpy_htod(&host.as_slice()?[..src.len()], &mut dev)?;
        let copied = stream.record_event(None)?;
        ring.push_back((host, copied));
        Ok(dev)
    }
}

/// Reused page-locked buffers that device results are copied back into.
pub struct Downloads<T> {
    pool: Mutex<Vec<PinnedHostSlice<T>>>,
}

/// A download on its way: read it with [`Downloads::finish`].
pub struct Pending<T> {
    host: PinnedHostSlice<T>,
    copied: CudaEvent,
    len: usize,
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy> Downloads<T> {
    pub fn new() -> Self {
        Downloads { pool: Mutex::new(Vec::new()) }
    }

    /// Queue the copy of `src` to the host.
    pub fn start(&self, ctx: &Arc<CudaContext>, stream: &Arc<CudaStream>, src: &CudaSlice<T>) -> Result<Pending<T>> {
        let len = src.len();
        let mut host = {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            match pool.iter().position(|p| p.len() >= len) {
                Some(k) => pool.swap_remove(k),
                // not write-combined: the host reads these
                // SAFETY: only read after the copy into it has landed
                None => unsafe { ctx.alloc_pinned_with_flags::<T>(len.next_power_of_two().max(1024), 0) }.context("page-locked host memory")?,
            }
        };
        // a raw slice of the page-locked buffer: cudarc's own copy into a PinnedHostSlice
        // would copy its whole length
        let dst = &mut host.as_mut_slice()?[..len];
        stream.memcpy_dtoh(src, dst)?;
        let copied = stream.record_event(None)?;
        Ok(Pending { host, copied, len })
    }

    /// Wait for the copy, hand the values to `read`, and keep the buffer for later copies.
    pub fn finish<R>(&self, p: Pending<T>, read: impl FnOnce(&[T]) -> R) -> Result<R> {
        p.copied.synchronize().context("waiting for the GPU's results")?;
        let r = read(&p.host.as_slice()?[..p.len]);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(p.host);
        Ok(r)
    }
}
