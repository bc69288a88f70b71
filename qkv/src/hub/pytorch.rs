//! PyTorch checkpoints (`pytorch_model.bin`, torch ≥ 1.6's zip format, as `save_pretrained(...,
//! safe_serialization=False)` writes them), read through candle's pickle reader — which interprets a fixed set
//! of opcodes and never runs pickle code — after a check of our own, since candle's reader trusts the file: it
//! allocates whatever a string length or a tensor shape claims and indexes argument tuples without checking
//! their length.
//!
//! The check: the file is a zip whose central directory reads (a truncated download is named as such); its
//! `data.pkl` uses only opcodes candle interprets, each with its arguments inside the stream; every global it
//! imports is one a state dict needs ([`ALLOWED_GLOBALS`]) — `os.system`, `builtins.eval` or any other is refused
//! by name before anything is interpreted; and every tensor lies inside its storage record (stored, not
//! compressed) with a dtype qkv reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::pickle::{PthTensors, TensorInfo};
use candle_core::{DType, Device, Tensor};

use crate::{Error, Result};

/// Single-file PyTorch weights.
pub const PYTORCH_WEIGHTS: &str = "pytorch_model.bin";
/// The index of sharded PyTorch weights (the same `weight_map` as safetensors').
pub const PYTORCH_WEIGHTS_INDEX: &str = "pytorch_model.bin.index.json";

/// The globals a state dict's pickle imports (torch's `_rebuild_tensor_v2` protocol) and candle rebuilds.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "ByteStorage"),
];

/// data.pkl of a large model is a few hundred KB (names and storage keys, no tensor data); a far larger one
/// is not a state dict.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Every tensor of a checked checkpoint, as f32 on `device`.
pub fn load_pytorch(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let infos = check(path)?;
    let read = std::panic::AssertUnwindSafe(|| read_tensors(path, &infos, device));
    crate::panic_guard::catch_quietly(read)
        .unwrap_or_else(|panic| Err(Error::input(path, None, format!("not a readable PyTorch checkpoint: {panic}"))))
}

fn read_tensors(path: &Path, infos: &[TensorInfo], device: &Device) -> Result<HashMap<String, Tensor>> {
    let unreadable =
        |e: candle_core::Error| Error::input(path, None, format!("not a readable PyTorch checkpoint: {e}"));
    let file = PthTensors::new(path, None).map_err(unreadable)?;
    let mut tensors = HashMap::with_capacity(infos.len());
    for info in infos {
        let tensor = file.get(&info.name).map_err(unreadable)?.ok_or_else(|| {
            Error::input(path, None, format!("tensor `{}` listed in data.pkl cannot be read", info.name))
        })?;
        tensors.insert(info.name.clone(), tensor.to_dtype(DType::F32)?.to_device(device)?);
    }
    Ok(tensors)
}

/// The tensors a checkpoint declares, after every check above; nothing of the pickle is interpreted until
/// its opcodes and globals have passed.
pub fn check(path: &Path) -> Result<Vec<TensorInfo>> {
    let mut archive = open_archive(path)?;
    let pickle_name = data_pickle_name(path, &mut archive)?;
    let pickle = read_entry(path, &mut archive, &pickle_name)?;
    scan_pickle(&pickle).map_err(|problem| Error::input(path, None, format!("{pickle_name}: {problem}")))?;
    let infos = crate::panic_guard::catch_quietly(|| candle_core::pickle::read_pth_tensor_info(path, false, None))
        .map_err(|panic| format!("data.pkl is not a state dict: {panic}"))
        .and_then(|r| r.map_err(|e| format!("data.pkl is not a state dict: {e}")))
        .map_err(|message| Error::input(path, None, message))?;
    if infos.is_empty() {
        return Err(Error::input(path, None, "holds no tensors (data.pkl is not a dict of tensors)"));
    }
    for info in &infos {
        check_extent(path, &mut archive, info)?;
    }
    Ok(infos)
}

fn open_archive(path: &Path) -> Result<zip::ZipArchive<BufReader<File>>> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
    if n < 4 || magic != *b"PK\x03\x04" {
        let message = if n > 0 && magic[0] == 0x80 {
            "is a legacy (torch < 1.6) pickle checkpoint, which qkv does not read: re-save it with a current torch \
             or as safetensors"
        } else {
            "is not a PyTorch checkpoint (torch.save writes a zip archive)"
        };
        return Err(Error::input(path, None, message));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    zip::ZipArchive::new(BufReader::new(file)).map_err(|e| {
        let message = format!("is truncated or damaged: its zip directory cannot be read ({e}); download it again");
        Error::input(path, None, message)
    })
}

/// The one `<archive>/data.pkl` of the zip.
fn data_pickle_name(path: &Path, archive: &mut zip::ZipArchive<BufReader<File>>) -> Result<String> {
    let names = archive.file_names().collect::<zip::result::ZipResult<Vec<_>>>();
    let names =
        names.map_err(|e| Error::input(path, None, format!("is damaged: a record name cannot be read ({e})")))?;
    let pickles: Vec<&str> = names.iter().map(|n| n.as_ref()).filter(|n| n.ends_with("data.pkl")).collect();
    match pickles[..] {
        [one] => Ok(one.to_string()),
        [] => Err(Error::input(path, None, "has no data.pkl: not a torch.save checkpoint")),
        _ => Err(Error::input(path, None, format!("has {} data.pkl records, expected one", pickles.len()))),
    }
}

/// A stored (uncompressed) record of the zip, read whole within a bound.
fn read_entry(path: &Path, archive: &mut zip::ZipArchive<BufReader<File>>, name: &str) -> Result<Vec<u8>> {
    let entry = archive.by_name(name).map_err(|e| Error::input(path, None, format!("{name}: {e}")))?;
    if entry.size() > MAX_PICKLE_BYTES {
        let message =
            format!("{name} is {} bytes, more than a state dict's pickle (at most {MAX_PICKLE_BYTES})", entry.size());
        return Err(Error::input(path, None, message));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    entry
        .take(MAX_PICKLE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::input(path, None, format!("{name}: {e}")))?;
    Ok(bytes)
}

/// A tensor must lie inside its storage record: offset + elements × dtype size ≤ the record's size (so
/// candle's reader allocates no more than the file holds), the record stored uncompressed, the tensor
/// contiguous, its dtype one qkv reads.
fn check_extent(path: &Path, archive: &mut zip::ZipArchive<BufReader<File>>, info: &TensorInfo) -> Result<()> {
    let name = &info.name;
    let bad = |message: String| Error::input(path, None, format!("tensor `{name}`: {message}"));
    if !matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64 | DType::I64 | DType::U8) {
        return Err(bad(format!("dtype {:?} is not one qkv reads", info.dtype)));
    }
    if !info.layout.is_contiguous() && !info.layout.is_fortran_contiguous() {
        return Err(bad("is not contiguous (re-save its state dict with .contiguous() tensors)".into()));
    }
    let entry = archive.by_name(&info.path).map_err(|e| bad(format!("storage {}: {e}", info.path)))?;
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(bad(format!("storage {} is compressed; torch.save stores tensors uncompressed", info.path)));
    }
    let elements = info.layout.dims().iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    let bytes = elements
        .and_then(|n| n.checked_mul(info.dtype.size_in_bytes() as u64))
        .and_then(|n| n.checked_add(info.layout.start_offset() as u64));
    match bytes {
        Some(bytes) if bytes <= entry.size() => Ok(()),
        _ => Err(bad(format!(
            "shape {:?} at byte {} of storage {} runs past its {} bytes",
            info.layout.dims(),
            info.layout.start_offset(),
            info.path,
            entry.size()
        ))),
    }
}

/// What an opcode takes after its byte.
enum Argument {
    None,
    Bytes(usize),
    /// A little-endian length of this many bytes, then that many bytes.
    Counted(usize),
    /// `n` newline-terminated lines (GLOBAL's module and name, the text opcodes of protocol 0).
    Lines(usize),
}

/// The opcodes candle's reader interprets (pickle protocol 2, as torch.save writes): name and argument.
fn interpreted(op: u8) -> Option<(&'static str, Argument)> {
    use Argument::*;
    Some(match op {
        0x80 => ("PROTO", Bytes(1)),
        b'c' => ("GLOBAL", Lines(2)),
        b'q' => ("BINPUT", Bytes(1)),
        b'r' => ("LONG_BINPUT", Bytes(4)),
        b'h' => ("BINGET", Bytes(1)),
        b'j' => ("LONG_BINGET", Bytes(4)),
        b'X' => ("BINUNICODE", Counted(4)),
        b'J' => ("BININT", Bytes(4)),
        b'K' => ("BININT1", Bytes(1)),
        b'M' => ("BININT2", Bytes(2)),
        b'G' => ("BINFLOAT", Bytes(8)),
        0x8a => ("LONG1", Counted(1)),
        b')' => ("EMPTY_TUPLE", None),
        b'R' => ("REDUCE", None),
        b'(' => ("MARK", None),
        b't' => ("TUPLE", None),
        0x85 => ("TUPLE1", None),
        0x86 => ("TUPLE2", None),
        0x87 => ("TUPLE3", None),
        0x88 => ("NEWTRUE", None),
        0x89 => ("NEWFALSE", None),
        b'N' => ("NONE", None),
        b'Q' => ("BINPERSID", None),
        b's' => ("SETITEM", None),
        b'u' => ("SETITEMS", None),
        b'}' => ("EMPTY_DICT", None),
        b'd' => ("DICT", None),
        b'b' => ("BUILD", None),
        b'.' => ("STOP", None),
        0x81 => ("NEWOBJ", None),
        b']' => ("EMPTY_LIST", None),
        b'a' => ("APPEND", None),
        b'e' => ("APPENDS", None),
        _ => return Option::None,
    })
}

/// Opcodes of later protocols that candle does not interpret, parsed only so that a pickle using them (a
/// protocol-4 `STACK_GLOBAL` of `os.system`) is refused for the global it imports rather than for its first
/// unknown opcode.
fn other(op: u8) -> Option<(&'static str, Argument)> {
    use Argument::*;
    Some(match op {
        0x8c => ("SHORT_BINUNICODE", Counted(1)),
        0x8d => ("BINUNICODE8", Counted(8)),
        b'C' => ("SHORT_BINBYTES", Counted(1)),
        b'B' => ("BINBYTES", Counted(4)),
        0x8e => ("BINBYTES8", Counted(8)),
        b'U' => ("SHORT_BINSTRING", Counted(1)),
        b'T' => ("BINSTRING", Counted(4)),
        0x95 => ("FRAME", Bytes(8)),
        0x94 => ("MEMOIZE", None),
        0x93 => ("STACK_GLOBAL", None),
        b'i' => ("INST", Lines(2)),
        b'o' => ("OBJ", None),
        0x92 => ("NEWOBJ_EX", None),
        0x82 => ("EXT1", Bytes(1)),
        0x83 => ("EXT2", Bytes(2)),
        0x84 => ("EXT4", Bytes(4)),
        b'P' => ("PERSID", Lines(1)),
        b'I' => ("INT", Lines(1)),
        b'L' => ("LONG", Lines(1)),
        b'F' => ("FLOAT", Lines(1)),
        b'S' => ("STRING", Lines(1)),
        b'V' => ("UNICODE", Lines(1)),
        b'p' => ("PUT", Lines(1)),
        b'g' => ("GET", Lines(1)),
        0x8b => ("LONG4", Counted(4)),
        b'0' => ("POP", None),
        b'1' => ("POP_MARK", None),
        b'2' => ("DUP", None),
        b'l' => ("LIST", None),
        0x8f => ("EMPTY_SET", None),
        0x90 => ("ADDITEMS", None),
        0x91 => ("FROZENSET", None),
        _ => return Option::None,
    })
}

/// Walks the opcode stream of `pickle` without interpreting it. Refused, in this order: a global outside
/// [`ALLOWED_GLOBALS`] (by `GLOBAL`, or by `STACK_GLOBAL` over the two strings pushed before it); an opcode
/// candle does not interpret; an argument running past the stream; a stream without `STOP`.
pub fn scan_pickle(pickle: &[u8]) -> std::result::Result<(), String> {
    let mut at = 0;
    let mut unsupported: Option<String> = None;
    // The strings pushed most recently (None for any other push): STACK_GLOBAL imports the top two.
    let mut recent: Vec<Option<String>> = Vec::new();
    while at < pickle.len() {
        let (op, start) = (pickle[at], at);
        let Some((name, argument)) = interpreted(op).or_else(|| {
            let found = other(op);
            if found.is_some() && unsupported.is_none() {
                let name = found.as_ref().map_or("", |(n, _)| n);
                unsupported = Some(format!("opcode {name} at byte {start} is not one a state dict needs"));
            }
            found
        }) else {
            return Err(unsupported.unwrap_or_else(|| format!("byte {start} (0x{op:02x}) is not a pickle opcode")));
        };
        at += 1;
        let arg = take_argument(pickle, &mut at, &argument).ok_or_else(|| {
            format!("{name} at byte {start} runs past the end of the stream (a truncated or damaged pickle)")
        })?;
        match name {
            "GLOBAL" | "INST" => {
                let text = String::from_utf8_lossy(arg);
                let mut lines = text.split('\n');
                let (module, class) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
                check_global(module, class)?;
                recent.push(None);
            }
            "STACK_GLOBAL" => match recent.as_slice() {
                [.., Some(module), Some(class)] => check_global(module, class)?,
                _ => return Err(format!("STACK_GLOBAL at byte {start} imports a global qkv cannot name: refused")),
            },
            "BINUNICODE" | "SHORT_BINUNICODE" | "BINUNICODE8" => {
                recent.push(Some(String::from_utf8_lossy(arg).into_owned()))
            }
            "MEMOIZE" | "BINPUT" | "LONG_BINPUT" | "PUT" | "FRAME" | "PROTO" | "MARK" => {}
            "STOP" => {
                return match unsupported {
                    Some(problem) => Err(problem),
                    None => Ok(()),
                };
            }
            _ => recent.push(None),
        }
        if recent.len() > 2 {
            recent.remove(0);
        }
    }
    Err(unsupported.unwrap_or_else(|| "the pickle ends without STOP (a truncated or damaged file)".to_string()))
}

/// The argument bytes of one opcode (advancing `at` past them), or `None` where they run past the end.
fn take_argument<'p>(pickle: &'p [u8], at: &mut usize, argument: &Argument) -> Option<&'p [u8]> {
    let rest = pickle.get(*at..)?;
    let length = match *argument {
        Argument::None => 0,
        Argument::Bytes(n) => n,
        Argument::Counted(width) => {
            let prefix = rest.get(..width)?;
            let count = prefix.iter().rev().fold(0u64, |n, &b| (n << 8) | b as u64);
            let count = usize::try_from(count).ok()?;
            *at += width;
            return take(pickle, at, count);
        }
        Argument::Lines(n) => {
            let mut end = 0;
            for _ in 0..n {
                end += rest.get(end..)?.iter().position(|&b| b == b'\n')? + 1;
            }
            end
        }
    };
    take(pickle, at, length)
}

fn take<'p>(pickle: &'p [u8], at: &mut usize, length: usize) -> Option<&'p [u8]> {
    let bytes = pickle.get(*at..at.checked_add(length)?)?;
    *at += length;
    Some(bytes)
}

fn check_global(module: &str, class: &str) -> std::result::Result<(), String> {
    if ALLOWED_GLOBALS.contains(&(module, class)) {
        return Ok(());
    }
    let allowed: Vec<String> = ALLOWED_GLOBALS.iter().map(|(m, c)| format!("{m}.{c}")).collect();
    Err(format!(
        "imports `{module}.{class}`, which a state dict never needs: refused (qkv runs no pickle code; a checkpoint \
         may import only {})",
        allowed.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opening of a state dict as torch.save writes it: a dict entry rebuilt by _rebuild_tensor_v2.
    const STATE_DICT: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02((X\x07\
        \x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x02tq\x07Q\
        K\x00K\x02\x85q\x08K\x01\x85q\t\x89ccollections\nOrderedDict\nq\n)Rq\x0btq\x0cRq\rtq\x0eb.";

    #[test]
    fn a_state_dict_passes() {
        // `b` (BUILD) pops what `(...t` built; the stream is what matters here, not its meaning.
        scan_pickle(STATE_DICT).unwrap();
    }

    #[test]
    fn foreign_globals_are_refused_by_name() {
        let system = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03.";
        let message = scan_pickle(system).unwrap_err();
        assert!(message.contains("`os.system`") && message.contains("refused"), "{message}");
        let eval = b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.";
        assert!(scan_pickle(eval).unwrap_err().contains("`builtins.eval`"));
        // Protocol 4: the global comes from two strings on the stack.
        let stacked = b"\x80\x04\x95\x14\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94.";
        assert!(scan_pickle(stacked).unwrap_err().contains("`os.system`"));
    }

    #[test]
    fn lengths_past_the_end_and_unknown_opcodes_are_refused() {
        // A string claiming 4 GiB: refused before anything is allocated.
        let huge = b"\x80\x02X\xff\xff\xff\xff.";
        assert!(scan_pickle(huge).unwrap_err().contains("BINUNICODE at byte 2 runs past the end"));
        assert!(scan_pickle(&STATE_DICT[..40]).unwrap_err().contains("truncated"));
        assert!(scan_pickle(b"\x80\x02\x01.").unwrap_err().contains("0x01"));
        let set = b"\x80\x02\x8f.";
        assert!(scan_pickle(set).unwrap_err().contains("EMPTY_SET at byte 2"));
    }
}
