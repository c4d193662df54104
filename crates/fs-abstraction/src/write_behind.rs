//! [`WriteBehind`]: writeback started while a file is written, so that its final `fsync`
//! does not have to write the whole file at once.

use std::io::{self, Write};

use crate::{ErrorChain, WriteFile};

/// How many bytes [`WriteBehind`] lets accumulate before it starts their writeback.
pub const WRITE_BEHIND_CHUNK: u64 = 8 << 20;

/// A file that is going to be synced ([`WriteFile::sync_all`]) when complete. Every
/// [`WRITE_BEHIND_CHUNK`] bytes written, it starts their writeback
/// ([`WriteFile::start_writeback`]), so the disk works while the writer goes on and the final
/// sync waits only for the tail instead of the whole file (for a large file, it would
/// otherwise stall the writer for as long as the disk takes to write it all).
///
/// Only for files that will be synced: on one that is written and removed, it makes the disk
/// write what would have stayed in the page cache.
pub struct WriteBehind {
    file: Box<dyn WriteFile>,
    /// Bytes written through this handle (the file is written sequentially from offset 0).
    written: u64,
    /// Bytes whose writeback was started.
    started: u64,
}

impl WriteBehind {
    /// Wraps a file opened for writing at offset 0 (created, truncated or new).
    pub fn new(file: Box<dyn WriteFile>) -> Self {
        Self {
            file,
            written: 0,
            started: 0,
        }
    }

    /// The wrapped file.
    pub fn into_inner(self) -> Box<dyn WriteFile> {
        self.file
    }

    fn maybe_start(&mut self) {
        let pending = self.written - self.started;
        if pending >= WRITE_BEHIND_CHUNK {
            // A hint: if it fails, the final sync simply does all the work.
            if let Err(error) = self.file.start_writeback(self.started, pending) {
                tracing::trace!(error = %ErrorChain(&error), "could not start writeback");
            }
            self.started = self.written;
        }
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.written += written as u64;
        self.maybe_start();
        Ok(written)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        self.maybe_start();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl WriteFile for WriteBehind {
    fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn start_writeback(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.file.start_writeback(offset, len)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.truncate(len)?;
        self.written = len;
        self.started = self.started.min(len);
        Ok(())
    }
}
