use super::*;
use crate::rng::SplitMix64;

fn q4_1_block(d: f32, m: f32, q: [u8; 32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20);
    b.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    b.extend_from_slice(&f32_to_f16(m).to_le_bytes());
    for j in 0..16 {
        b.push(q[j] | (q[j + 16] << 4));
    }
    b
}

fn q8_0_block(d: f32, q: [i8; 32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(34);
    b.extend_from_slice(&f32_to_f16(d).to_le_bytes());
    b.extend(q.iter().map(|&v| v as u8));
    b
}

/// A small file with metadata of every type and one tensor of each readable type.
fn sample() -> Vec<u8> {
    let f32s: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let f16s: Vec<u8> = [1.0f32, -0.5]
        .iter()
        .flat_map(|&v| f32_to_f16(v).to_le_bytes())
        .collect();
    let mut q4 = [0u8; 32];
    for (j, q) in q4.iter_mut().enumerate() {
        *q = (j % 16) as u8;
    }
    let mut q8 = [0i8; 32];
    for (j, q) in q8.iter_mut().enumerate() {
        *q = j as i8 - 16;
    }
    let mut q4_bytes = q4_1_block(0.5, -1.0, q4);
    q4_bytes.extend(q4_1_block(0.25, 2.0, q4));
    write(
        &[
            ("general.architecture", Value::String("llama".into())),
            ("u8", Value::U8(200)),
            ("i8", Value::I8(-3)),
            ("u16", Value::U16(60_000)),
            ("i16", Value::I16(-30_000)),
            ("u32", Value::U32(7)),
            ("i32", Value::I32(-7)),
            ("u64", Value::U64(1 << 40)),
            ("i64", Value::I64(-(1 << 40))),
            ("f32", Value::F32(1e-5)),
            ("f64", Value::F64(0.1)),
            ("bool", Value::Bool(true)),
            (
                "strings",
                Value::Array(vec![Value::String("a".into()), Value::String("Ġb".into())]),
            ),
            (
                "nested",
                Value::Array(vec![Value::Array(vec![Value::I32(1), Value::I32(2)])]),
            ),
        ],
        &[
            ("f32", vec![2, 2], TensorType::F32, f32s),
            ("f16", vec![2], TensorType::F16, f16s),
            ("q4", vec![32, 2], TensorType::Q4_1, q4_bytes),
            ("q8", vec![32], TensorType::Q8_0, q8_0_block(0.125, q8)),
        ],
    )
}

#[test]
fn written_files_read_back() {
    let bytes = sample();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    assert_eq!(g.uint("u8").unwrap(), 200);
    assert_eq!(g.uint("u16").unwrap(), 60_000);
    assert_eq!(g.uint("u64").unwrap(), 1 << 40);
    assert!(g.uint("i8").is_err(), "a negative value is not a count");
    assert_eq!(g.get("i16").unwrap(), &Value::I16(-30_000));
    assert_eq!(g.get("i64").unwrap(), &Value::I64(-(1 << 40)));
    assert_eq!(g.float("f32").unwrap(), f64::from(1e-5f32));
    assert_eq!(g.float("f64").unwrap(), 0.1);
    assert_eq!(g.get("bool").unwrap(), &Value::Bool(true));
    assert_eq!(g.array("strings").unwrap()[1], Value::String("Ġb".into()));
    assert_eq!(
        g.array("nested").unwrap()[0],
        Value::Array(vec![Value::I32(1), Value::I32(2)])
    );
    assert!(
        g.str("u32")
            .unwrap_err()
            .to_string()
            .contains("not a string")
    );
    assert!(g.get("absent").unwrap_err().to_string().contains("missing"));

    assert_eq!(
        g.tensor("f32").unwrap().to_f32().unwrap(),
        [1.5, -2.0, 0.25, 8.0]
    );
    assert_eq!(g.tensor("f16").unwrap().to_f32().unwrap(), [1.0, -0.5]);
    let q4 = g.tensor("q4").unwrap().to_f32().unwrap();
    assert_eq!(q4.len(), 64);
    for j in 0..32 {
        let q = (j % 16) as f32;
        assert_eq!(q4[j], q * 0.5 - 1.0, "first block, value {j}");
        assert_eq!(q4[32 + j], q * 0.25 + 2.0, "second block, value {j}");
    }
    let q8 = g.tensor("q8").unwrap().to_f32().unwrap();
    for (j, v) in q8.iter().enumerate() {
        assert_eq!(*v, (j as f32 - 16.0) * 0.125);
    }
    assert!(matches!(
        g.tensor("absent"),
        Err(Error::MissingTensor { .. })
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    for len in 0..bytes.len() {
        // Cutting the padding after the last tensor leaves a whole file only at its very end.
        let cut = &bytes[..len];
        match Gguf::parse(cut) {
            Err(Error::BadGguf { reason }) => assert!(!reason.is_empty()),
            Err(other) => panic!("length {len}: unexpected error {other}"),
            Ok(g) => {
                // Only the trailing alignment padding may go.
                let last = g.tensors.iter().map(|t| t.data.len()).sum::<usize>();
                assert!(last > 0 && len >= bytes.len() - 31, "length {len} parsed");
            }
        }
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let mut rng = SplitMix64::new(42);
    for len in [0usize, 3, 4, 24, 100, 4096] {
        for _ in 0..200 {
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len >= 8 && rng.next_u64().is_multiple_of(2) {
                // Past the magic and version, into the counts and beyond.
                bytes[..4].copy_from_slice(b"GGUF");
                bytes[4..8].copy_from_slice(&3u32.to_le_bytes());
            }
            let _ = Gguf::parse(&bytes);
        }
    }
    // Single-byte corruptions of a valid file: each parses or fails cleanly.
    let good = sample();
    for i in 0..good.len() {
        let mut bytes = good.clone();
        bytes[i] ^= 0xa5;
        if let Ok(g) = Gguf::parse(&bytes) {
            for t in &g.tensors {
                let _ = t.to_f32();
            }
        }
    }
}

fn err(bytes: &[u8]) -> String {
    match Gguf::parse(bytes) {
        Ok(_) => panic!("parsed"),
        Err(e) => e.to_string(),
    }
}

/// The header and one metadata entry, hand-written, for the corruptions below.
fn header(tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&tensors.to_le_bytes());
    b.extend_from_slice(&kvs.to_le_bytes());
    b
}

fn key(b: &mut Vec<u8>, k: &str, code: u32) {
    b.extend_from_slice(&(k.len() as u64).to_le_bytes());
    b.extend_from_slice(k.as_bytes());
    b.extend_from_slice(&code.to_le_bytes());
}

#[test]
fn bad_headers_and_metadata_name_the_problem() {
    assert!(err(b"GGML\x03\0\0\0").contains("bad magic"));
    let mut v2 = sample();
    v2[4] = 2;
    assert!(err(&v2).contains("version 2"));
    assert!(err(&header(1 << 40, 0)).contains("tensors (limit"));
    assert!(err(&header(0, 1 << 40)).contains("metadata entries (limit"));

    let mut b = header(0, 1);
    b.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(&b).contains("metadata key is"));

    let mut b = header(0, 1);
    key(&mut b, "x", 99);
    assert!(err(&b).contains("unknown value type 99"));

    let mut b = header(0, 1);
    key(&mut b, "flag", 7);
    b.push(2);
    assert!(err(&b).contains("bool byte 2"));

    let mut b = header(0, 1);
    key(&mut b, "arr", 9);
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err(&b).contains("claims"), "{}", err(&b));

    let mut b = header(0, 1);
    key(&mut b, "s", 8);
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&[0xff, 0xfe]);
    assert!(err(&b).contains("not valid UTF-8"));

    // Arrays of arrays of … stop at a fixed depth.
    let mut b = header(0, 1);
    key(&mut b, "deep", 9);
    for _ in 0..10 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    assert!(err(&b).contains("nested too deep"));

    let mut b = header(0, 2);
    key(&mut b, "k", 4);
    b.extend_from_slice(&1u32.to_le_bytes());
    key(&mut b, "k", 4);
    b.extend_from_slice(&1u32.to_le_bytes());
    assert!(err(&b).contains("appears twice"));

    let mut b = header(0, 1);
    key(&mut b, "general.alignment", 4);
    b.extend_from_slice(&24u32.to_le_bytes());
    assert!(err(&b).contains("power of two"));
}

/// A file with one tensor info as given and `data` bytes after the header.
fn one_tensor(dims: &[u64], code: u32, offset: u64, data: usize) -> Vec<u8> {
    let mut b = header(1, 0);
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(b"w.it");
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&code.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.resize(b.len().div_ceil(32) * 32 + data, 0);
    b
}

#[test]
fn bad_tensor_infos_name_the_problem() {
    assert!(Gguf::parse(&one_tensor(&[4, 2], 0, 0, 32)).is_ok());
    assert!(err(&one_tensor(&[4, 2], 0, 0, 31)).contains("truncated: tensor w.it"));
    assert!(err(&one_tensor(&[4, 2], 0, 32, 32)).contains("truncated"));
    assert!(err(&one_tensor(&[4, 2], 0, 8, 64)).contains("alignment"));
    assert!(err(&one_tensor(&[4, 0], 0, 0, 32)).contains("dimensions [4, 0]"));
    assert!(err(&one_tensor(&[], 0, 0, 32)).contains("0 dimensions"));
    assert!(err(&one_tensor(&[1, 1, 1, 1, 1], 0, 0, 32)).contains("5 dimensions"));
    assert!(err(&one_tensor(&[1 << 40, 1 << 40], 0, 0, 32)).contains("dimensions"));
    assert!(err(&one_tensor(&[u64::MAX / 2, 3], 0, 0, 32)).contains("dimensions"));
    // A quantised row must be whole blocks.
    assert!(err(&one_tensor(&[48, 1], 3, 0, 64)).contains("32-value Q4_1 blocks"));
    // Offsets past the end of the address space do not wrap.
    assert!(err(&one_tensor(&[4], 0, u64::MAX - 31, 32)).contains("truncated"));
    match Gguf::parse(&one_tensor(&[4], 12, 0, 32)) {
        Err(Error::UnsupportedTensorType { name, kind }) => {
            assert_eq!((name.as_str(), kind.as_str()), ("w.it", "ggml type 12"));
        }
        other => panic!("{other:?}"),
    }
    // Known size but not dequantised: an error when read, not when parsed.
    let g_bytes = one_tensor(&[32], 2, 0, 32);
    let g = Gguf::parse(&g_bytes).unwrap();
    assert!(matches!(
        g.tensors[0].to_f32(),
        Err(Error::UnsupportedTensorType { .. })
    ));

    let two = write(
        &[],
        &[
            ("a", vec![8], TensorType::F32, vec![0; 32]),
            ("a", vec![8], TensorType::F32, vec![0; 32]),
        ],
    );
    assert!(err(&two).contains("appears twice"));
    let mut overlap = write(
        &[],
        &[
            ("a", vec![16], TensorType::F32, vec![0; 64]),
            ("b", vec![8], TensorType::F32, vec![0; 32]),
        ],
    );
    // Point b's offset (the last 8 bytes of its info) into a.
    let info_end = overlap.len() - 96;
    let at = (0..info_end)
        .rev()
        .find(|&i| overlap[i..i + 8] == 64u64.to_le_bytes())
        .unwrap();
    overlap[at..at + 8].copy_from_slice(&32u64.to_le_bytes());
    assert!(err(&overlap).contains("overlap"));
}

#[test]
fn non_finite_weights_are_refused() {
    let bytes = write(
        &[],
        &[(
            "w",
            vec![2],
            TensorType::F16,
            [0x3c00u16, 0x7c00]
                .iter()
                .flat_map(|h| h.to_le_bytes())
                .collect(),
        )],
    );
    let g = Gguf::parse(&bytes).unwrap();
    assert!(matches!(
        g.tensors[0].to_f32(),
        Err(Error::NonFiniteWeight { index: 1, .. })
    ));
}

#[test]
fn f16_conversion_is_exact() {
    assert_eq!(f16_to_f32(0x3c00), 1.0);
    assert_eq!(f16_to_f32(0xc000), -2.0);
    assert_eq!(f16_to_f32(0x7bff), 65504.0);
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
    assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
    assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
    assert!(f16_to_f32(0x7e00).is_nan());
    // Every normal f16 goes to f32 and back unchanged.
    for h in 0u16..=0xffff {
        let exp = (h >> 10) & 0x1f;
        if exp != 0 && exp != 31 {
            assert_eq!(f32_to_f16(f16_to_f32(h)), h, "{h:#06x}");
        }
    }
    // Ties round to even.
    assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
    assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
}

#[test]
fn smollm2_file_parses() {
    let path = crate::testing::smollm2_dir().join("model.gguf");
    let bytes = std::fs::read(&path).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.str("general.architecture").unwrap(), "llama");
    assert_eq!(g.uint("llama.block_count").unwrap(), 30);
    assert_eq!(g.uint("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(g.float("llama.rope.freq_base").unwrap(), 100_000.0);
    assert_eq!(g.array("tokenizer.ggml.tokens").unwrap().len(), 49_152);
    assert_eq!(g.array("tokenizer.ggml.merges").unwrap().len(), 48_900);
    let embd = g.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.kind, embd.dims.as_slice()),
        (TensorType::Q8_0, &[576, 49_152][..])
    );
    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (q.kind, q.dims.as_slice()),
        (TensorType::Q4_1, &[576, 576][..])
    );
    let norm = g.tensor("output_norm.weight").unwrap().to_f32().unwrap();
    assert_eq!(norm.len(), 576);
}

/// A model rewritten with one more metadata key: the same generation under another id, the
/// same bytes every time; garbage is an error.
#[test]
fn a_metadata_variant_is_the_same_model_under_another_id() {
    let original = crate::seeded_llama_gguf(4, 1);
    let variant = super::with_metadata(&original, "proofmesh.variant", "tee").unwrap();
    assert_eq!(
        variant,
        super::with_metadata(&original, "proofmesh.variant", "tee").unwrap()
    );
    let a = crate::Model::from_gguf_bytes("a", original.clone()).unwrap();
    let b = crate::Model::from_gguf_bytes("b", variant.clone()).unwrap();
    assert_ne!(a.id(), b.id());
    let input = br#"{"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 6}"#;
    let cpu = crate::CpuBackend::new();
    let (x, y) = (a.run(&cpu, input).unwrap(), b.run(&cpu, input).unwrap());
    assert_eq!(x.hash(), y.hash());
    // Setting the key again replaces it rather than adding a second one.
    let again = super::with_metadata(&variant, "proofmesh.variant", "tee").unwrap();
    assert_eq!(again, variant);
    assert!(super::with_metadata(b"GGUF\x03\x00garbage", "k", "v").is_err());
}
