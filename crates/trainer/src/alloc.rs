//! The binaries' memory allocator: mimalloc, told to keep freed memory for reuse.
//!
//! A training step allocates and frees the same large buffers every time (W2's attention scores
//! are 16·8·256·256 f32 = 32 MiB each). glibc maps every block above its 32 MiB mmap ceiling
//! afresh, and mimalloc by default returns freed memory to the OS after 10 ms; either way each
//! step page-faults and zeroes those buffers again (measured on W2: 30 % of the step in the
//! kernel's `clear_page`). With purging off, freed pages stay mapped and are reused.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOCATOR: bmt_trainer::alloc::Allocator = bmt_trainer::alloc::Allocator {};
//!
//! fn main() {
//!     bmt_trainer::alloc::keep_freed_memory();
//! }
//! ```

/// The allocator type to install with `#[global_allocator]`.
pub type Allocator = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (mimalloc.h, v2.1 and v3): the delay in
/// milliseconds before freed memory is returned to the OS; -1 never returns it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never return freed memory to the OS (mimalloc's purge delay −1). Call first thing in `main`;
/// without mimalloc installed as the global allocator it changes nothing.
pub fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; called at start-up
    // before other threads exist, as mimalloc's documentation requires for option changes.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
