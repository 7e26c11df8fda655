//! [`PageBuf`]: a zeroed heap buffer aligned on a page, the memory that direct I/O
//! (`O_DIRECT`) reads from and writes into: the kernel moves such a buffer to and from the
//! device without a copy through the page cache, but only if its address, length and file
//! offset are all multiples of the logical block size (a page is a multiple of every one).

use std::alloc::{alloc, alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

/// The alignment of a [`PageBuf`], and the granule direct I/O needs.
pub const ALIGN: usize = 4096;

/// From this size on a buffer is its own mapping, populated at once (`MAP_POPULATE`): one
/// call instead of a page fault per page when it is first written, and given back to the
/// kernel when dropped.
pub const MAPPED_FROM: usize = 16 << 20;

/// A zeroed, page-aligned, fixed-size byte buffer, owned (freed when dropped).
pub struct PageBuf {
    ptr: NonNull<u8>,
    len: usize,
    /// An anonymous mapping of `len` rounded up to a page (else a heap allocation).
    mapped: bool,
}

/// `len` bytes of fresh anonymous memory (zeroed by the kernel), populated; `None` if the
/// kernel refuses (the caller then uses the heap).
fn map_populated(len: usize) -> Option<NonNull<u8>> {
    // SAFETY: a new private anonymous mapping at an address the kernel chooses: no existing
    // memory of this process is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p.cast())
}

// SAFETY: a PageBuf owns its allocation exclusively, like a Box<[u8]>; nothing in it is tied to
// a thread.
unsafe impl Send for PageBuf {}
// SAFETY: shared access only hands out `&[u8]`, as for a Box<[u8]>.
unsafe impl Sync for PageBuf {}

impl PageBuf {
    /// A buffer of `len` zero bytes at a page-aligned address (`len` 0 is allowed).
    ///
    /// # Panics
    /// If `len` rounded up to a page overflows `isize` (as `Vec` does on capacity overflow).
    pub fn zeroed(len: usize) -> PageBuf {
        if len == 0 {
            return PageBuf {
                ptr: NonNull::dangling(),
                len: 0,
                mapped: false,
            };
        }
        let layout = Self::layout(len);
        if len >= MAPPED_FROM {
            if let Some(ptr) = map_populated(layout.size()) {
                return PageBuf {
                    ptr,
                    len,
                    mapped: true,
                };
            }
        }
        // SAFETY: the layout has a non-zero size (len > 0) and a power-of-two alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        match NonNull::new(raw) {
            Some(ptr) => PageBuf {
                ptr,
                len,
                mapped: false,
            },
            None => handle_alloc_error(layout),
        }
    }

    /// A buffer of `len` bytes filled by `fill` without being zeroed first (the zeroing costs
    /// as much as the copy that follows): `fill` reads or copies into it through a [`Filler`],
    /// and whatever it left unwritten is zeroed before the buffer is handed out.
    pub fn filled<E>(
        len: usize,
        fill: impl FnOnce(&mut Filler<'_>) -> Result<(), E>,
    ) -> Result<PageBuf, E> {
        if len == 0 {
            return Ok(PageBuf::zeroed(0));
        }
        let buf = if len >= MAPPED_FROM {
            // Mapped memory is zeroed already; the copy below is the only pass over it.
            PageBuf::zeroed(len)
        } else {
            let layout = Self::layout(len);
            // SAFETY: the layout has a non-zero size (len > 0) and a power-of-two alignment.
            // The memory is uninitialised: no reference to it is made before the Filler has
            // written or zeroed every byte (below); dropping the buffer early only frees it.
            let raw = unsafe { alloc(layout) };
            let Some(ptr) = NonNull::new(raw) else {
                handle_alloc_error(layout)
            };
            PageBuf {
                ptr,
                len,
                mapped: false,
            }
        };
        let ptr = buf.ptr;
        let mut filler = Filler {
            buf: &buf,
            written: vec![false; len.div_ceil(ALIGN)],
        };
        fill(&mut filler)?;
        for (page, written) in filler.written.iter().enumerate() {
            if !written {
                let at = page * ALIGN;
                let n = ALIGN.min(len - at);
                // SAFETY: at + n <= len, inside the allocation; writing bytes needs no
                // initialised contents.
                unsafe { std::ptr::write_bytes(ptr.as_ptr().add(at), 0, n) };
            }
        }
        Ok(buf)
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len.div_ceil(ALIGN) * ALIGN, ALIGN)
            .expect("a buffer size that fits in isize")
    }
}

impl Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr points to an allocation of at least len initialised (zeroed) bytes that
        // this PageBuf owns; the borrow of self keeps it alive and unaliased by &mut.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        let layout = Self::layout(self.len);
        if self.mapped {
            // SAFETY: the mapping made by map_populated with this length, unmapped only here;
            // no reference into it outlives self.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), layout.size()) };
        } else {
            // SAFETY: allocated with exactly this layout, and freed only here.
            unsafe { dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBuf({} bytes)", self.len)
    }
}

/// Writes into a [`PageBuf`] being built by [`PageBuf::filled`], a whole page at a time, and
/// remembers which pages it wrote.
pub struct Filler<'a> {
    buf: &'a PageBuf,
    written: Vec<bool>,
}

impl Filler<'_> {
    fn check(&self, at: usize, len: usize) -> io::Result<()> {
        match at.checked_add(len) {
            Some(end)
                if at % ALIGN == 0
                    && end <= self.buf.len
                    && (len % ALIGN == 0 || end == self.buf.len) =>
            {
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{len} bytes at {at} of a {}-byte page buffer: not whole pages inside it",
                    self.buf.len
                ),
            )),
        }
    }

    fn mark(&mut self, at: usize, len: usize) {
        for w in &mut self.written[at / ALIGN..(at + len).div_ceil(ALIGN)] {
            *w = true;
        }
    }

    /// Reads `len` bytes of `file` at `offset` into the buffer at `at` (whole pages); fails on
    /// a read error or end of file.
    pub fn read_at(&mut self, at: usize, len: usize, file: &File, offset: u64) -> io::Result<()> {
        self.check(at, len)?;
        let mut done = 0;
        while done < len {
            let off = i64::try_from(offset + done as u64)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: the destination is bytes at + done .. at + len of the allocation (checked
            // above), owned by the buffer and not referenced elsewhere while it is being filled;
            // pread writes at most len - done bytes there.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    self.buf.ptr.as_ptr().add(at + done).cast(),
                    len - done,
                    off,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        self.mark(at, len);
        Ok(())
    }

    /// Copies `data` (whole pages) into the buffer at `at`.
    pub fn copy(&mut self, at: usize, data: &[u8]) -> io::Result<()> {
        self.check(at, data.len())?;
        // SAFETY: the destination is inside the allocation (checked) and cannot overlap `data`,
        // a shared borrow of other memory (the buffer hands out no reference while filling).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.ptr.as_ptr().add(at), data.len())
        };
        self.mark(at, data.len());
        Ok(())
    }
}

/// Whether `bytes` may be handed to direct I/O as it is: its address and length are multiples
/// of [`ALIGN`].
pub fn direct_io_ready(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize) % ALIGN == 0 && bytes.len() % ALIGN == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempfile_with(data: &[u8]) -> File {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("clu-sys-buf-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(data).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }

    #[test]
    fn zeroed_aligned_and_writable() {
        for len in [0, 1, 4095, 4096, 3 * 4096 + 7, 1 << 22] {
            let mut b = PageBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            if len > 0 {
                assert_eq!(b.as_ptr() as usize % ALIGN, 0);
                b[len - 1] = 7;
                assert_eq!(b[len - 1], 7);
            }
        }
        let b = PageBuf::zeroed(2 * ALIGN);
        assert!(direct_io_ready(&b));
        let f = tempfile_with(&[5u8; 3 * ALIGN]);
        let b = PageBuf::filled(4 * ALIGN, |w| {
            w.read_at(ALIGN, 2 * ALIGN, &f, 0)?;
            w.copy(3 * ALIGN, &[9u8; ALIGN])?;
            assert!(w.read_at(1, ALIGN, &f, 0).is_err(), "unaligned");
            assert!(
                w.read_at(3 * ALIGN, 2 * ALIGN, &f, 0).is_err(),
                "past the end"
            );
            assert!(
                w.read_at(0, ALIGN, &f, 3 * ALIGN as u64).is_err(),
                "end of file"
            );
            Ok::<(), io::Error>(())
        })
        .unwrap();
        assert!(b[..ALIGN].iter().all(|&x| x == 0), "unwritten: zeroed");
        assert!(b[ALIGN..3 * ALIGN].iter().all(|&x| x == 5));
        assert!(b[3 * ALIGN..].iter().all(|&x| x == 9));
        let big = PageBuf::filled(2 * MAPPED_FROM + 5, |w| w.copy(ALIGN, &[3u8; ALIGN])).unwrap();
        assert_eq!(big.as_ptr() as usize % ALIGN, 0);
        assert_eq!(
            (big[0], big[ALIGN], big[2 * ALIGN], big[2 * MAPPED_FROM + 4]),
            (0, 3, 0, 0)
        );
        let failed = PageBuf::filled(ALIGN, |w| w.read_at(0, ALIGN, &f, 1 << 30));
        assert!(failed.is_err());
        assert!(direct_io_ready(&b[ALIGN..]));
        assert!(!direct_io_ready(&b[1..ALIGN + 1]));
        assert!(!direct_io_ready(&b[..100]));
    }
}
