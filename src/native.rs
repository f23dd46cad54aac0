//! Native shell: models read from files on disk, generations driven on worker threads.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::catalog::Route;
use crate::error::{Error, Result};
use crate::generator::{GenerateOptions, Generator, Prompt};
use crate::model::Model;
use crate::stream::{ChunkSender, ChunkStream};

impl Model {
    /// Opens the GGUF file at `path`: header, tokenizer and weights.
    ///
    /// # Errors
    /// [`Error::Io`] naming the path when it cannot be opened, and any error of
    /// [`Model::read`].
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        Model::read(&mut open(path.as_ref())?)
    }

    /// As [`Model::open`], calling `progress(bytes_read, file_size)` as the file is read.
    ///
    /// # Errors
    /// As [`Model::open`].
    pub fn open_with_progress(path: impl AsRef<Path>, progress: impl FnMut(u64, u64)) -> Result<Model> {
        let file = open(path.as_ref())?;
        let total = file.get_ref().metadata()?.len();
        Model::read(&mut Progress { inner: file, done: 0, total, report: progress })
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
    /// Where this route's model file is looked for by default:
    /// `${CANDLEWICK_CACHE:-~/.cache/candlewick}/models/<file name>`.
    pub fn default_path(&self) -> PathBuf {
        cache_dir().join("models").join(self.file_name())
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
    if data.len() <= chunk || rayon::current_num_threads() == 1 {
        data.chunks_mut(chunk).enumerate().for_each(|(i, c)| work(i, c));
    } else {
        data.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| work(i, c));
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

fn open(path: &Path) -> Result<BufReader<File>> {
    let file = File::open(path).map_err(|e| with_path(e, path))?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

fn with_path(e: std::io::Error, path: &Path) -> Error {
    Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// A reader that reports how far it has read.
struct Progress<R, F> {
    inner: R,
    done: u64,
    total: u64,
    report: F,
}

impl<R: Read, F: FnMut(u64, u64)> Read for Progress<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.report)(self.done.min(self.total), self.total);
        Ok(n)
    }
}

impl<R: Seek, F> Seek for Progress<R, F> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let at = self.inner.seek(pos)?;
        self.done = at;
        Ok(at)
    }
}
