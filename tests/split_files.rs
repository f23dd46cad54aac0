//! Model files as people get the large ones: split in shards by gguf-split, opened from the
//! first shard and memory-mapped; and the ways such files go wrong, each a clear error.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candlewick::gguf::{ggml_type_block, Gguf};
use candlewick::{Chunk, Error, GenerateOptions, Model, Prompt, SamplingConfig};
use common::gguf_writer::{GgufFile, Meta};
use common::synthetic::{all_metadata, qwen3_file, Shape};
use common::{model, QWEN25_CODER};

fn source() -> Gguf {
    Gguf::read(&mut std::io::BufReader::new(std::fs::File::open(model(QWEN25_CODER)).expect("Qwen2.5-Coder (make models)"))).expect("a GGUF header")
}

/// A small qwen3moe model with random weights, as one file.
fn whole_file(name: &str) -> PathBuf {
    let shape = Shape { layers: 2, hidden: 128, heads: 4, kv_heads: 2, head_dim: 32, ffn: 256, experts: Some((8, 2, 64)) };
    qwen3_file(&source(), &shape, 0x5EED_5B11, name)
}

/// Splits the file at `path` into `count` shards in a new directory, as gguf-split does: the
/// first shard holds the metadata, every shard the `split.*` keys and its share of the tensors.
fn split(path: &Path, count: usize, dir_name: &str) -> Vec<PathBuf> {
    let mut file = std::fs::File::open(path).expect("the whole file");
    let gguf = Gguf::read(&mut file).expect("its header");
    let dir = std::env::temp_dir().join(format!("candlewick-split-{}-{dir_name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let per = gguf.tensors.len().div_ceil(count);
    let mut paths = Vec::new();
    for (no, tensors) in gguf.tensors.chunks(per).enumerate() {
        let mut shard = GgufFile::new();
        if no == 0 {
            for (key, meta) in all_metadata(&gguf) {
                shard = shard.meta(&key, meta);
            }
        }
        shard = shard
            .meta("split.no", Meta::U32(no as u32))
            .meta("split.count", Meta::U32(count as u32))
            .meta("split.tensors.count", Meta::I32(gguf.tensors.len() as i32));
        for t in tensors {
            let (per_block, block_bytes) = ggml_type_block(t.ggml_type).expect("a sized type");
            let mut data = vec![0u8; (t.elements() / per_block * block_bytes) as usize];
            file.seek(SeekFrom::Start(gguf.data_offset + t.offset)).expect("seek");
            file.read_exact(&mut data).expect("tensor data");
            shard = shard.tensor(&t.name, &t.dims, t.ggml_type, data);
        }
        let path = dir.join(format!("model-{:05}-of-{count:05}.gguf", no + 1));
        std::fs::write(&path, shard.bytes()).expect("write a shard");
        paths.push(path);
    }
    assert_eq!(paths.len(), count);
    paths
}

/// Greedy tokens for a raw prompt.
fn greedy(model: &Model) -> Vec<u32> {
    let options = GenerateOptions { max_tokens: 12, sampling: SamplingConfig::greedy(), ..GenerateOptions::default() };
    let mut generator = model.generator(Prompt::Raw("def fibonacci(n):".into()), options).expect("a generator");
    while let Some(chunk) = generator.next_chunk() {
        if let Chunk::Error { message } = chunk {
            panic!("generation failed: {message}");
        }
    }
    generator.generated_tokens().to_vec()
}

fn open_error(path: &Path) -> String {
    match Model::open(path) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_split_model_opens_from_its_first_shard_and_generates_as_the_whole_file() {
    let whole = whole_file("split-whole");
    let shards = split(&whole, 3, "ok");
    let want = greedy(&Model::open(&whole).expect("the whole file"));
    let model = Model::open(&shards[0]).expect("the split model");
    assert_eq!(model.gguf().tensors.iter().map(|t| t.shard).max(), Some(2));
    assert_eq!(greedy(&model), want);
    assert_eq!(want.len(), 12);
    // The same bytes in memory, handed over shard by shard.
    let files: Vec<candlewick::bytes::Bytes> = shards.iter().map(|p| std::fs::read(p).expect("a shard").into()).collect();
    let header = Gguf::read(&mut std::io::Cursor::new(&files[0][..])).expect("the first header");
    assert_eq!(greedy(&Model::from_files_with_progress(header, files, |_, _| {}).expect("the shards in memory")), want);

    // A later shard names the first.
    let message = open_error(&shards[1]);
    assert!(message.contains("shard 2 of 3") && message.contains("open the first shard") && message.contains("model-00001-of-00003.gguf"), "{message}");
}

#[test]
fn a_missing_shard_is_named() {
    let shards = split(&whole_file("split-missing"), 3, "missing");
    std::fs::remove_file(&shards[2]).expect("remove the last shard");
    let message = open_error(&shards[0]);
    assert!(message.contains("missing") && message.contains(&shards[2].display().to_string()), "{message}");
}

#[test]
fn a_truncated_shard_is_named() {
    let shards = split(&whole_file("split-truncated"), 3, "truncated");
    let len = std::fs::metadata(&shards[1]).expect("a shard").len();
    std::fs::OpenOptions::new().write(true).open(&shards[1]).expect("open").set_len(len / 2).expect("truncate");
    let message = open_error(&shards[0]);
    assert!(message.contains("shard 2 of 3") && message.contains("truncated"), "{message}");
}

#[test]
fn shards_that_do_not_add_up_are_refused() {
    let whole = whole_file("split-count");
    let shards = split(&whole, 2, "count");
    // The first shard of another split claiming three shards: its second shard is not there.
    let bytes = std::fs::read(&shards[0]).expect("a shard");
    let gguf = Gguf::read(&mut std::io::Cursor::new(&bytes[..])).expect("a header");
    let files: Vec<candlewick::bytes::Bytes> = vec![bytes.into()];
    let message = match Model::from_files_with_progress(gguf, files, |_, _| {}) {
        Ok(_) => panic!("one shard of two opened"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("2 shards declared, 1 given"), "{message}");
}

#[test]
fn an_unknown_tensor_type_is_named() {
    let whole = whole_file("unknown-type");
    let mut file = std::fs::File::open(&whole).expect("the file");
    let gguf = Gguf::read(&mut file).expect("its header");
    let mut out = GgufFile::new();
    for (key, meta) in all_metadata(&gguf) {
        out = out.meta(&key, meta);
    }
    for t in &gguf.tensors {
        let (per_block, block_bytes) = ggml_type_block(t.ggml_type).expect("a sized type");
        let mut data = vec![0u8; (t.elements() / per_block * block_bytes) as usize];
        file.seek(SeekFrom::Start(gguf.data_offset + t.offset)).expect("seek");
        file.read_exact(&mut data).expect("tensor data");
        // ggml type 99 does not exist.
        let ggml_type = if t.name == "blk.1.ffn_up_exps.weight" { 99 } else { t.ggml_type };
        out = out.tensor(&t.name, &t.dims, ggml_type, data);
    }
    let path = std::env::temp_dir().join(format!("candlewick-test-{}-type99.gguf", std::process::id()));
    std::fs::write(&path, out.bytes()).expect("write");
    let message = open_error(&path);
    assert!(message.contains("blk.1.ffn_up_exps.weight") && message.contains("99"), "{message}");
}

/// A source that claims to be larger than any machine's memory; reading from it fails the test.
struct Huge;

impl Read for Huge {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        panic!("the model was read before its size was checked")
    }
}

impl Seek for Huge {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        Ok(match pos {
            SeekFrom::End(_) => 1 << 50,
            _ => 0,
        })
    }
}

#[test]
fn a_model_larger_than_memory_is_refused_before_it_is_read() {
    match Model::read(&mut Huge) {
        Err(e @ Error::ModelTooLarge { .. }) => {
            let message = e.to_string();
            assert!(message.contains("1048576.00 GiB") && message.contains("Model::open"), "{message}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a model of 1 PiB was read"),
    }
}
