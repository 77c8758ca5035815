//! A reader for GGUF version 3 files (the llama.cpp model format): header, metadata, tensor
//! infos and tensor data, with every count, length and offset checked against the file before
//! anything is allocated or read, so a truncated or garbage file is an [`Error::BadGguf`] and
//! never a panic or a huge allocation.
//!
//! Layout (all integers little-endian): magic `GGUF`, version `u32`, tensor count `u64`,
//! metadata count `u64`; the metadata as `(key: string, type: u32, value)`; the tensor infos as
//! `(name: string, n_dims: u32, dims: [u64; n_dims], type: u32, offset: u64)`; padding to
//! `general.alignment` (default 32); then the tensor data, each tensor at its (aligned) offset
//! from the start of that section. A string is a `u64` byte length and UTF-8 bytes. `dims[0]` is
//! the innermost (contiguous) dimension: a `[in, out]` matrix holds `out` rows of `in` values,
//! and quantisation blocks run along `dims[0]`.

use std::collections::HashMap;

use crate::Error;

/// Most tensors in one file.
const MAX_TENSORS: u64 = 1 << 16;
/// Most metadata entries in one file.
const MAX_METADATA: u64 = 1 << 16;
/// Most dimensions of one tensor.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays.
const MAX_DEPTH: usize = 4;
/// Longest key or tensor name.
const MAX_NAME: u64 = 1 << 16;

fn bad(reason: impl Into<String>) -> Error {
    Error::BadGguf {
        reason: reason.into(),
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// The tensor element types this reader knows the size of (ggml's numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TensorType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Bf16,
}

impl TensorType {
    fn from_code(code: u32) -> Option<TensorType> {
        Some(match code {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            6 => TensorType::Q5_0,
            7 => TensorType::Q5_1,
            8 => TensorType::Q8_0,
            30 => TensorType::Bf16,
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`.
    fn block(self) -> (u64, u64) {
        match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::Bf16 => (1, 2),
            TensorType::Q4_0 => (32, 18),
            TensorType::Q4_1 => (32, 20),
            TensorType::Q5_0 => (32, 22),
            TensorType::Q5_1 => (32, 24),
            TensorType::Q8_0 => (32, 34),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Q5_0 => "Q5_0",
            TensorType::Q5_1 => "Q5_1",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Bf16 => "BF16",
        }
    }
}

/// One tensor's description and its bytes.
#[derive(Debug, Clone)]
pub(crate) struct Tensor<'a> {
    pub(crate) name: String,
    /// Innermost first, as in the file.
    pub(crate) dims: Vec<u64>,
    pub(crate) kind: TensorType,
    pub(crate) data: &'a [u8],
}

impl Tensor<'_> {
    /// Number of elements.
    pub(crate) fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The values as f32, row-major with `dims[0]` innermost. F32, F16, Q4_1 and Q8_0 only.
    ///
    /// Q4_1 block (20 bytes for 32 values): `d: f16, m: f16, qs: [u8; 16]`, value `j` is
    /// `q·d + m` with `q` the low nibble of `qs[j]` for `j < 16`, else the high nibble of
    /// `qs[j − 16]`. Q8_0 block (34 bytes): `d: f16, qs: [i8; 32]`, value `j` is `qs[j]·d`.
    /// Both products are exact in f32 (an 11-bit mantissa times a 4- or 8-bit integer), so Q8_0
    /// values are exact and Q4_1 values are rounded once, by the `+ m`: dequantising here, at
    /// load, or inside a GEMM gives the same bits.
    pub(crate) fn to_f32(&self) -> Result<Vec<f32>, Error> {
        let n = usize::try_from(self.elements())
            .map_err(|_| bad(format!("tensor {} is too large", self.name)))?;
        let mut out = Vec::with_capacity(n);
        dequantize_into(self.kind, self.data, &self.name, &mut out)?;
        debug_assert_eq!(out.len(), n);
        Ok(out)
    }
}

/// Appends the values of `data` (whole blocks of `kind`) to `out`, checking each is finite;
/// `name` names the tensor in errors. The one dequantisation: whole tensors at load and the
/// token embedding's rows per token go through it.
pub(crate) fn dequantize_into(
    kind: TensorType,
    data: &[u8],
    name: &str,
    out: &mut Vec<f32>,
) -> Result<(), Error> {
    let start = out.len();
    match kind {
        TensorType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        TensorType::F16 => out.extend(
            data.chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))),
        ),
        TensorType::Q4_1 => {
            for block in data.chunks_exact(20) {
                let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
                let m = f16_to_f32(u16::from_le_bytes([block[2], block[3]]));
                let qs = &block[4..20];
                out.extend(qs.iter().map(|q| f32::from(q & 15).mul_add(d, m)));
                out.extend(qs.iter().map(|q| f32::from(q >> 4).mul_add(d, m)));
            }
        }
        TensorType::Q8_0 => {
            for block in data.chunks_exact(34) {
                let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
                out.extend(block[2..].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        other => {
            return Err(Error::UnsupportedTensorType {
                name: name.to_string(),
                kind: other.name().into(),
            });
        }
    }
    if let Some(index) = out[start..].iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFiniteWeight {
            name: name.to_string(),
            index,
        });
    }
    Ok(())
}

impl Tensor<'_> {
    /// Block `i` (in file order: row-major, `dims[0] / 32` blocks per row) of a Q4_1 or Q8_0
    /// tensor as `(d, m, q)`: the scale, the minimum (0 for Q8_0) and each value's raw
    /// quant (a nibble for Q4_1, the i8's byte for Q8_0). Other types give zeros.
    pub(crate) fn block(&self, i: usize) -> (f32, f32, [u8; 32]) {
        let mut q = [0u8; 32];
        let half = |b: &[u8], at: usize| f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]));
        match self.kind {
            TensorType::Q4_1 => {
                let b = &self.data[i * 20..(i + 1) * 20];
                for j in 0..16 {
                    q[j] = b[4 + j] & 15;
                    q[j + 16] = b[4 + j] >> 4;
                }
                (half(b, 0), half(b, 2), q)
            }
            TensorType::Q8_0 => {
                let b = &self.data[i * 34..(i + 1) * 34];
                q.copy_from_slice(&b[2..34]);
                (half(b, 0), 0.0, q)
            }
            _ => (0.0, 0.0, q),
        }
    }

    /// Checks that every block's scale and minimum is finite (Q4_1, Q8_0); then every value
    /// is, as [`Tensor::to_f32`] would check.
    pub(crate) fn check_scales(&self) -> Result<(), Error> {
        let (per, bytes) = self.kind.block();
        let blocks = self.elements() / per;
        for i in 0..blocks as usize {
            let (d, m, _) = self.block(i);
            if !d.is_finite() || !m.is_finite() {
                return Err(Error::NonFiniteWeight {
                    name: self.name.clone(),
                    index: i * per as usize,
                });
            }
        }
        debug_assert_eq!(self.data.len() as u64, blocks * bytes);
        Ok(())
    }
}

/// IEEE half precision to single, exactly (every f16 is an f32).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal: frac · 2^-24, exact in f32.
        (0, _) => {
            let v = frac as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// A parsed GGUF file, borrowing the tensor data from the file's bytes.
#[derive(Debug)]
pub(crate) struct Gguf<'a> {
    pub(crate) metadata: HashMap<String, Value>,
    pub(crate) tensors: Vec<Tensor<'a>>,
}

/// A cursor over the file that fails cleanly at its end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], Error> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(bad(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {left} left",
                self.pos
            )));
        }
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str, max: u64) -> Result<String, Error> {
        let len = self.u64(what)?;
        if len > max {
            return Err(bad(format!("{what} is {len} bytes long (limit {max})")));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, code: u32, key: &str, depth: usize) -> Result<Value, Error> {
        Ok(match code {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(bad(format!("metadata {key}: bool byte {b}"))),
            },
            8 => Value::String(self.string(key, u64::MAX)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(bad(format!("metadata {key}: arrays nested too deep")));
                }
                let inner = self.u32(key)?;
                let count = self.u64(key)?;
                // Every element takes at least one byte (a string at least eight): a count the
                // rest of the file cannot hold is refused before anything is allocated.
                let min = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    _ => return Err(bad(format!("metadata {key}: unknown value type {inner}"))),
                };
                let left = (self.bytes.len() - self.pos) as u64;
                if count.saturating_mul(min) > left {
                    return Err(bad(format!(
                        "truncated: metadata {key} claims {count} elements; the file has {left} bytes left"
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(inner, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            _ => return Err(bad(format!("metadata {key}: unknown value type {code}"))),
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parses `bytes`, the whole file.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Gguf<'a>, Error> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.array::<4>("magic")?;
        if &magic != b"GGUF" {
            return Err(bad(format!(
                "bad magic {magic:02x?}; a GGUF file starts with \"GGUF\""
            )));
        }
        let version = r.u32("version")?;
        if version != 3 {
            return Err(bad(format!(
                "version {version}; this reader supports version 3"
            )));
        }
        let tensor_count = r.u64("tensor count")?;
        let kv_count = r.u64("metadata count")?;
        if tensor_count > MAX_TENSORS {
            return Err(bad(format!("{tensor_count} tensors (limit {MAX_TENSORS})")));
        }
        if kv_count > MAX_METADATA {
            return Err(bad(format!(
                "{kv_count} metadata entries (limit {MAX_METADATA})"
            )));
        }
        let mut metadata = HashMap::new();
        for _ in 0..kv_count {
            let key = r.string("metadata key", MAX_NAME)?;
            let code = r.u32(&key)?;
            let value = r.value(code, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(bad(format!("metadata key {key} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(other) => {
                return Err(bad(format!(
                    "general.alignment is {other:?}; it must be a power of two (u32)"
                )));
            }
        };
        struct Info {
            name: String,
            dims: Vec<u64>,
            kind: TensorType,
            offset: u64,
            size: u64,
        }
        let mut infos: Vec<Info> = Vec::new();
        for _ in 0..tensor_count {
            let name = r.string("tensor name", MAX_NAME)?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad(format!(
                    "tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&name)?);
            }
            let code = r.u32(&name)?;
            let kind = TensorType::from_code(code).ok_or_else(|| Error::UnsupportedTensorType {
                name: name.clone(),
                kind: format!("ggml type {code}"),
            })?;
            let offset = r.u64(&name)?;
            let elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&e| e > 0)
                .ok_or_else(|| bad(format!("tensor {name} has dimensions {dims:?}")))?;
            let (per_block, block_bytes) = kind.block();
            if dims[0] % per_block != 0 {
                return Err(bad(format!(
                    "tensor {name}: {} rows of {} values do not split into {}-value {} blocks",
                    elements / dims[0],
                    dims[0],
                    per_block,
                    kind.name()
                )));
            }
            let size = (elements / per_block)
                .checked_mul(block_bytes)
                .ok_or_else(|| bad(format!("tensor {name} is too large")))?;
            if offset % alignment != 0 {
                return Err(bad(format!(
                    "tensor {name} at offset {offset}, not a multiple of the alignment {alignment}"
                )));
            }
            if infos.iter().any(|i| i.name == name) {
                return Err(bad(format!("tensor {name} appears twice")));
            }
            infos.push(Info {
                name,
                dims,
                kind,
                offset,
                size,
            });
        }
        let start = (r.pos as u64).div_ceil(alignment) * alignment;
        let data_len = (bytes.len() as u64).saturating_sub(start);
        let mut spans: Vec<(u64, u64, usize)> = Vec::with_capacity(infos.len());
        for (i, info) in infos.iter().enumerate() {
            let end = info
                .offset
                .checked_add(info.size)
                .filter(|&e| e <= data_len);
            let Some(end) = end else {
                return Err(bad(format!(
                    "truncated: tensor {} needs bytes {}..{} of the data section, which has {data_len}",
                    info.name,
                    info.offset,
                    info.offset.saturating_add(info.size)
                )));
            };
            spans.push((info.offset, end, i));
        }
        spans.sort_unstable();
        for pair in spans.windows(2) {
            if pair[1].0 < pair[0].1 {
                return Err(bad(format!(
                    "tensors {} and {} overlap",
                    infos[pair[0].2].name, infos[pair[1].2].name
                )));
            }
        }
        let tensors = infos
            .into_iter()
            .map(|info| {
                // In range: checked above against the file's length.
                let from = (start + info.offset) as usize;
                Tensor {
                    data: &bytes[from..from + info.size as usize],
                    name: info.name,
                    dims: info.dims,
                    kind: info.kind,
                }
            })
            .collect();
        Ok(Gguf { metadata, tensors })
    }

    /// The metadata value under `key`, or an error naming the missing key.
    pub(crate) fn get(&self, key: &str) -> Result<&Value, Error> {
        self.metadata
            .get(key)
            .ok_or_else(|| bad(format!("metadata {key} is missing")))
    }

    /// A metadata string.
    pub(crate) fn str(&self, key: &str) -> Result<&str, Error> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            other => Err(bad(format!(
                "metadata {key} is a {}, not a string",
                other.type_name()
            ))),
        }
    }

    /// A metadata non-negative integer of any width.
    pub(crate) fn uint(&self, key: &str) -> Result<u64, Error> {
        let v = self.get(key)?;
        v.as_u64().ok_or_else(|| {
            bad(format!(
                "metadata {key} is a {} ({v:?}), not a non-negative integer",
                v.type_name()
            ))
        })
    }

    /// A metadata float (f32 or f64).
    pub(crate) fn float(&self, key: &str) -> Result<f64, Error> {
        match *self.get(key)? {
            Value::F32(v) => Ok(v.into()),
            Value::F64(v) => Ok(v),
            ref other => Err(bad(format!(
                "metadata {key} is a {}, not a float",
                other.type_name()
            ))),
        }
    }

    /// A metadata array.
    pub(crate) fn array(&self, key: &str) -> Result<&[Value], Error> {
        match self.get(key)? {
            Value::Array(items) => Ok(items),
            other => Err(bad(format!(
                "metadata {key} is a {}, not an array",
                other.type_name()
            ))),
        }
    }

    /// The tensor called `name`.
    pub(crate) fn tensor(&self, name: &str) -> Result<&Tensor<'a>, Error> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::MissingTensor { name: name.into() })
    }
}

/// Writes a GGUF version 3 file with `metadata` (in the given order) and `tensors`
/// (`(name, dims innermost first, type, raw bytes)`, aligned to 32 bytes): the inverse of
/// [`Gguf::parse`], for seeded models and tests.
/// `bytes` (a GGUF file) with the string metadata `key` set to `value`: the same weights,
/// tokenizer and architecture in other bytes, so under another model id (the id covers the
/// file). Metadata keys are written in sorted order and tensors in file order, so the result
/// is the same every time. How a network registers one model twice, under two verification
/// modes.
pub fn with_metadata(bytes: &[u8], key: &str, value: &str) -> Result<Vec<u8>, Error> {
    let g = Gguf::parse(bytes)?;
    // The writer aligns tensors to 32 bytes, the default.
    if let Some(a) = g.metadata.get("general.alignment")
        && !matches!(a, Value::U32(32))
    {
        return Err(bad(format!(
            "general.alignment is {a:?}; only the default 32 can be rewritten"
        )));
    }
    let mut metadata: Vec<(&str, Value)> = g
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != key && k.as_str() != "general.alignment")
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    metadata.push((key, Value::String(value.to_string())));
    metadata.sort_by(|a, b| a.0.cmp(b.0));
    let tensors: Vec<(&str, Vec<u64>, TensorType, Vec<u8>)> = g
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dims.clone(), t.kind, t.data.to_vec()))
        .collect();
    Ok(write(&metadata, &tensors))
}

pub(crate) fn write(
    metadata: &[(&str, Value)],
    tensors: &[(&str, Vec<u64>, TensorType, Vec<u8>)],
) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn code(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    fn value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(u8::from(*x)),
            Value::String(s) => string(out, s),
            Value::Array(items) => {
                // An empty array's element type is not recorded here: u8.
                out.extend_from_slice(&items.first().map_or(0, code).to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    value(out, item);
                }
            }
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, v) in metadata {
        string(&mut out, key);
        out.extend_from_slice(&code(v).to_le_bytes());
        value(&mut out, v);
    }
    let mut offset = 0u64;
    for (name, dims, kind, bytes) in tensors {
        string(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        let code: u32 = match kind {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Q4_0 => 2,
            TensorType::Q4_1 => 3,
            TensorType::Q5_0 => 6,
            TensorType::Q5_1 => 7,
            TensorType::Q8_0 => 8,
            TensorType::Bf16 => 30,
        };
        out.extend_from_slice(&code.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += (bytes.len() as u64).div_ceil(32) * 32;
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
        out.resize(out.len().div_ceil(32) * 32, 0);
    }
    out
}

/// f32 to IEEE half, rounding to nearest even (for seeded weights and tests; values in f16's
/// normal range).
pub(crate) fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    if x == 0.0 {
        return sign;
    }
    if exp <= 0 {
        // Below f16's normal range: flush (seeded weights never get here).
        return sign;
    }
    if exp >= 31 {
        return sign | 0x7c00;
    }
    let mant = bits & 0x7f_ffff;
    let mut h = (u32::from(sign) | ((exp as u32) << 10) | (mant >> 13)) as u16;
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1; // carries into the exponent correctly
    }
    h
}

#[cfg(test)]
pub(crate) mod tests;
