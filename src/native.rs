//! Native shell: models read from files on disk, generations driven on worker threads.

use std::fs::File;
use std::io::{BufReader, Cursor};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bytes::{Backing, Bytes};
use crate::catalog::Route;
use crate::chat::Message;
use crate::session::Session;
use crate::error::{Error, Result};
use crate::gguf::Gguf;
use crate::generator::{GenerateOptions, Generator, Prompt};
use crate::model::Model;
use crate::stream::{ChunkSender, ChunkStream};

impl Model {
    /// Opens the GGUF file at `path`: header, tokenizer and weights. The file is memory-mapped
    /// read-only and its weights are used where they lie (a few matrices are repacked for this
    /// CPU's kernels, within a budget of an eighth of the available memory and at least
    /// [`crate::arch::REPACK_BUDGET`]), so opening costs little beyond
    /// the header, and a file larger than memory runs from the page cache. The first file of a
    /// split model (`<name>-00001-of-000NN.gguf`, as gguf-split writes them) opens every shard.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when it (or a shard) cannot be opened or mapped, and any
    /// error of [`Model::from_bytes`]; [`Error::InvalidMetadata`] when `path` is a later shard
    /// or the shards do not belong together.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        Model::open_with_progress(path, |_, _| {})
    }

    /// As [`Model::open`], calling `progress(bytes, total)` as the weights are placed.
    ///
    /// # Errors
    /// As [`Model::open`].
    pub fn open_with_progress(path: impl AsRef<Path>, progress: impl FnMut(u64, u64)) -> Result<Model> {
        let path = path.as_ref();
        let first = map(path)?;
        let header = Gguf::read(&mut Cursor::new(&first[..]))?;
        let mut files = vec![first];
        if let Some((no, count, _)) = header.split()? {
            for (i, shard) in shard_paths(path, no, count)?.into_iter().enumerate().skip(1) {
                if !shard.is_file() {
                    return Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("shard {} of {count} of the split model {} is missing: expected {}", i + 1, path.display(), shard.display()),
                    )));
                }
                files.push(map(&shard)?);
            }
        }
        Model::from_files_with_progress(header, files, progress)
    }

    /// Opens the header and tokenizer of the GGUF file at `path`, without the weights: for
    /// tokenizing, chat templates and model facts, on any architecture.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path, and any error of [`Model::read_without_weights`].
    pub fn open_without_weights(path: impl AsRef<Path>) -> Result<Model> {
        Model::read_without_weights(&mut open(path.as_ref())?)
    }

    /// Opens the GGUF file at `path` with the tokenizer.json at `tokenizer_json`, which takes
    /// precedence over the file's own tokenizer.
    ///
    /// # Errors
    /// [`Error::Io`] naming a path that cannot be read, and any error of
    /// [`Model::read_with_tokenizer_json`].
    pub fn open_with_tokenizer_json(path: impl AsRef<Path>, tokenizer_json: impl AsRef<Path>, with_weights: bool) -> Result<Model> {
        let json_path = tokenizer_json.as_ref();
        let json = std::fs::read(json_path).map_err(|e| with_path(e, json_path))?;
        Model::read_with_tokenizer_json(&mut open(path.as_ref())?, &json, with_weights)
    }

    /// Generates on a worker thread and streams the chunks. Errors (a bad option, a prompt
    /// longer than the context) arrive as one `Error` chunk. Dropping the stream stops the
    /// forward passes within one token.
    pub fn generate(&self, prompt: impl Into<Prompt>, options: GenerateOptions) -> ChunkStream {
        match self.generator(prompt, options) {
            Ok(generator) => spawn(generator),
            Err(e) => ChunkStream::failed(e.to_string()),
        }
    }
}

impl Session {
    /// Runs a turn ([`Session::generator`]) on a worker thread and streams its chunks. The
    /// session has its cache back, and the reply in its conversation, by the time the
    /// `Complete` chunk arrives. Errors arrive as one `Error` chunk; dropping the stream stops
    /// the turn within one token.
    pub fn generate(&mut self, new_messages: Vec<Message>, options: GenerateOptions) -> ChunkStream {
        match self.generator(new_messages, options) {
            Ok(generator) => spawn(generator),
            Err(e) => ChunkStream::failed(e.to_string()),
        }
    }
}

/// Drives `generator` on a new thread into a stream.
fn spawn(mut generator: Generator) -> ChunkStream {
    let (sender, stream) = ChunkStream::channel();
    generator.set_cancel_flag(sender.cancel_flag());
    std::thread::spawn(move || drive(&mut generator, &sender));
    stream
}

fn drive(generator: &mut Generator, sender: &ChunkSender) {
    while let Some(chunk) = generator.next_chunk() {
        if !sender.send(chunk) {
            return; // the reader is gone
        }
    }
}

impl Route {
    /// Where this route's model file is looked for by default: the first of its
    /// [`Route::known_files`] found in `${CANDLEWICK_CACHE:-~/.cache/candlewick}/models` (for a
    /// split model, its first shard, `<name>-00001-of-000NN.gguf`), else where the first of them
    /// would be.
    pub fn default_path(&self) -> PathBuf {
        let dir = cache_dir().join("models");
        let names: Vec<String> = std::fs::read_dir(&dir).map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()).unwrap_or_default();
        for known in self.known_files() {
            let found = if known.split {
                let prefix = format!("{}-00001-of-", known.name);
                names.iter().find(|n| n.starts_with(&prefix) && n.ends_with(".gguf"))
            } else {
                names.iter().find(|n| *n == known.name)
            };
            if let Some(name) = found {
                return dir.join(name);
            }
        }
        dir.join(self.file_name())
    }

    /// Runs real inference on this route's model from the default path (see
    /// [`Route::default_path`]). A model that cannot be loaded yields one `Error` chunk that
    /// says why (the path looked for, the unsupported architecture).
    pub fn prompt(&self, prompt: impl Into<Prompt>, options: GenerateOptions) -> ChunkStream {
        self.prompt_file(self.default_path(), prompt, options)
    }

    /// As [`Route::prompt`], with the model file the caller names. Loading happens on the
    /// worker thread, so this returns at once.
    pub fn prompt_file(&self, path: impl AsRef<Path>, prompt: impl Into<Prompt>, options: GenerateOptions) -> ChunkStream {
        let route = *self;
        let path = path.as_ref().to_path_buf();
        let prompt = prompt.into();
        let (sender, stream) = ChunkStream::channel();
        std::thread::spawn(move || {
            let prepared = route.check_file(&path).and_then(|()| Model::open(&path)).and_then(|model| {
                route.check_architecture(model.gguf().architecture()?)?;
                model.generator(prompt, options)
            });
            match prepared {
                Ok(mut generator) => {
                    generator.set_cancel_flag(sender.cancel_flag());
                    drive(&mut generator, &sender);
                }
                Err(e) => {
                    sender.send(crate::stream::Chunk::Error { message: format!("{} route: {e}", route.name()) });
                }
            }
        });
        stream
    }

    fn check_file(&self, path: &Path) -> Result<()> {
        if path.is_file() {
            return Ok(());
        }
        Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("model file {} not found ({})", path.display(), self.how_to_get()),
        )))
    }
}

/// Runs `work(index, chunk)` on each `chunk`-long piece of `data`, in parallel on the current
/// pool of worker threads. One piece, or a pool of one thread, runs on the calling thread: handing
/// work to a pool and waiting costs two context switches, which took a third of one-thread
/// decoding's time when every product paid them.
pub(crate) fn parallel_chunks<T: Send>(data: &mut [T], chunk: usize, work: impl Fn(usize, &mut [T]) + Sync + Send) {
    use rayon::prelude::*;
    let chunk = chunk.max(1);
    let pieces = data.len().div_ceil(chunk);
    if pieces > 1 {
        // Chunk i at data[i·chunk..]: the chunks are disjoint, each handed to one call.
        let (start, len) = (SendPtr(data.as_mut_ptr()), data.len());
        let run = |i: usize| {
            let at = i * chunk;
            // SAFETY: `at < len` for every chunk index, each chunk index is run once, and the
            // chunks do not overlap; `data` is borrowed mutably until every chunk has run.
            let piece = unsafe { std::slice::from_raw_parts_mut(start.get().add(at), chunk.min(len - at)) };
            work(i, piece)
        };
        if crate::team::chunks(pieces, &run) {
            return;
        }
    }
    if data.len() <= chunk || rayon::current_num_threads() == 1 {
        data.chunks_mut(chunk).enumerate().for_each(|(i, c)| work(i, c));
    } else {
        data.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| work(i, c));
    }
}

/// A raw pointer that may cross threads: [`parallel_chunks`] hands each thread its own chunk.
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only to hand disjoint chunks of a `&mut [T]` with `T: Send` to other threads.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; the pointer itself is only copied.
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// Gives the memory of freed allocations back to the system. glibc's allocator keeps freed
/// small blocks for reuse, and they count in the process's resident memory until it does;
/// tokenizer building leaves 12 MiB of them for SmolLM2 and 38 MiB for Qwen2.5, which the
/// weights (allocated apart, in large blocks) never reuse.
pub(crate) fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it has no
    // preconditions and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs `work` on a pool of `threads` worker threads (one pool per size, kept for reuse), or on
/// the default pool (one thread per core) when `threads` is `None`.
pub(crate) fn with_threads<T: Send>(threads: Option<usize>, work: impl FnOnce() -> T + Send) -> T {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    // A team of spinning threads where one is free; else rayon's pool.
    let work = match crate::team::lead(threads.unwrap_or_else(rayon::current_num_threads).max(1), work) {
        Ok(done) => return done,
        Err(work) => work,
    };
    let Some(n) = threads else { return work() };
    let pool = {
        let mut pools = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        match pools.get(&n) {
            Some(pool) => Some(pool.clone()),
            None => rayon::ThreadPoolBuilder::new().num_threads(n).build().ok().map(|pool| pools.entry(n).or_insert(Arc::new(pool)).clone()),
        }
    };
    match pool {
        Some(pool) => pool.install(work),
        None => work(), // the system would not start the threads: run on the default pool
    }
}

/// The cache directory: `$CANDLEWICK_CACHE`, else `~/.cache/candlewick`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CANDLEWICK_CACHE") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("candlewick")
}

/// The name of shard `no` (0-based) of `count` of a split model, as gguf-split names them.
fn shard_name(prefix: &str, no: usize, count: usize) -> String {
    format!("{prefix}-{:05}-of-{count:05}.gguf", no + 1)
}

/// The paths of the `count` shards of the split model whose shard `no` (0-based) is at `path`.
///
/// # Errors
/// [`Error::InvalidMetadata`] when `path` is not named as shard `no` is, or is not the first.
fn shard_paths(path: &Path, no: usize, count: usize) -> Result<Vec<PathBuf>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let this = shard_name("", no, count);
    let Some(prefix) = name.strip_suffix(&this) else {
        return Err(Error::InvalidMetadata {
            key: "split.no".into(),
            reason: format!("{} is shard {} of {count} of a split model, but its name does not end in {this}", path.display(), no + 1),
        });
    };
    if no != 0 {
        return Err(Error::InvalidMetadata {
            key: "split.no".into(),
            reason: format!("{} is shard {} of {count} of a split model: open the first shard, {}", path.display(), no + 1, path.with_file_name(shard_name(prefix, 0, count)).display()),
        });
    }
    Ok((0..count).map(|i| path.with_file_name(shard_name(prefix, i, count))).collect())
}

/// A file memory-mapped read-only.
struct Mapped(memmap2::Mmap);

impl Backing for Mapped {
    fn bytes(&self) -> &[u8] {
        &self.0
    }

    fn release(&self, range: Range<usize>) {
        // Only the whole pages inside the range, so that no neighbour is dropped; a failure
        // leaves the pages resident, which costs memory, not correctness.
        let page = 4096;
        let (start, end) = (range.start.next_multiple_of(page), range.end / page * page);
        if start < end {
            // SAFETY: the map is private and read-only, so no page holds a change of ours:
            // MADV_DONTNEED only drops this mapping's pages, and a later read faults them back
            // in from the file, unchanged. Nothing can have written through the map.
            let _ = unsafe { self.0.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
        }
    }
}

/// The file at `path`, memory-mapped read-only, as shared bytes.
fn map(path: &Path) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| with_path(e, path))?;
    // SAFETY: the map is read-only and private. Its contents change only if another process
    // truncates or rewrites the file while the model is open, which every memory-mapping
    // engine (llama.cpp among them) leaves to the user not to do.
    let map = unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| with_path(e, path))?;
    // Read ahead in the background when the file fits in memory; a larger file is read as its
    // pages are needed.
    if available_memory().is_some_and(|free| map.len() as u64 <= free) {
        let _ = map.advise(memmap2::Advice::WillNeed);
    }
    Ok(Bytes::from_backing(Arc::new(Mapped(map))))
}

/// The memory the system could give this process now without swapping (`MemAvailable`), or
/// `None` where it cannot be read.
pub(crate) fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

fn open(path: &Path) -> Result<BufReader<File>> {
    let file = File::open(path).map_err(|e| with_path(e, path))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

fn with_path(e: std::io::Error, path: &Path) -> Error {
    Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}
