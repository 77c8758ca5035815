//! Reading and writing safetensors files of F32 tensors.

use std::collections::BTreeMap;

use safetensors::{Dtype, SafeTensors};

use crate::Error;

/// One F32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tensor {
    pub(crate) shape: Vec<usize>,
    pub(crate) data: Vec<f32>,
}

/// Parses a safetensors buffer, requiring every tensor to be F32 with finite values.
pub(crate) fn read_f32(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, Error> {
    read_f32_except(bytes, |_| false)
}

/// [`read_f32`], but tensors whose name `skip` accepts are left out unread, whatever their
/// dtype (buffers such as BERT's integer `position_ids`, or weights a model does not use).
pub(crate) fn read_f32_except(
    bytes: &[u8],
    skip: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, Tensor>, Error> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::BadSafetensors {
        reason: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        if skip(name) {
            continue;
        }
        if view.dtype() != Dtype::F32 {
            return Err(Error::BadDtype {
                name: name.to_string(),
                dtype: view.dtype().to_string(),
            });
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFiniteWeight {
                name: name.to_string(),
                index,
            });
        }
        out.insert(
            name.to_string(),
            Tensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Removes tensor `name` from `tensors`, checking its shape.
pub(crate) fn take(
    tensors: &mut BTreeMap<String, Tensor>,
    name: String,
    expected: Vec<usize>,
) -> Result<Vec<f32>, Error> {
    let Some(t) = tensors.remove(&name) else {
        return Err(Error::MissingTensor { name });
    };
    if t.shape != expected {
        return Err(Error::ShapeMismatch {
            name,
            expected,
            actual: t.shape,
        });
    }
    Ok(t.data)
}

/// Serialises F32 tensors in the given order. The header is written by hand (not through a JSON
/// map whose key order could depend on crate features) so the bytes depend only on the input:
/// `{"name":{"dtype":"F32","shape":[..],"data_offsets":[begin,end]},..}`, padded with spaces to a
/// multiple of 8 bytes as the format recommends.
pub(crate) fn write_f32(tensors: &[(String, Tensor)]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut offset = 0usize;
    for (i, (name, t)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        let end = offset + 4 * t.data.len();
        // Names here are crate-chosen ASCII (`layers.0.weight`); serde_json quotes them exactly.
        let quoted = serde_json::Value::String(name.clone()).to_string();
        header.push_str(&format!(
            "{quoted}:{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            shape.join(",")
        ));
        offset = end;
    }
    header.push('}');
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, t) in tensors {
        for v in &t.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, Tensor)> {
        vec![
            (
                "layers.0.weight".into(),
                Tensor {
                    shape: vec![2, 3],
                    data: vec![1.0, -2.0, 3.5, 0.0, 1e-3, -7.0],
                },
            ),
            (
                "layers.0.bias".into(),
                Tensor {
                    shape: vec![3],
                    data: vec![0.25, 0.5, -0.75],
                },
            ),
        ]
    }

    #[test]
    fn write_then_read_round_trips() {
        let bytes = write_f32(&sample());
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
        let back = read_f32(&bytes).unwrap();
        assert_eq!(back.len(), 2);
        for (name, t) in sample() {
            assert_eq!(back[&name], t);
        }
    }

    #[test]
    fn reads_what_the_safetensors_crate_writes() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 2], &data).unwrap();
        let bytes = safetensors::serialize([("w", view)], None).unwrap();
        let back = read_f32(&bytes).unwrap();
        assert_eq!(
            back["w"],
            Tensor {
                shape: vec![2, 2],
                data: vec![1.0, 2.0, 3.0, 4.0]
            }
        );
    }

    #[test]
    fn rejects_other_dtypes_and_non_finite_values() {
        let data = vec![0u8; 8];
        let view = safetensors::tensor::TensorView::new(Dtype::F16, vec![4], &data).unwrap();
        let bytes = safetensors::serialize([("h", view)], None).unwrap();
        assert!(
            matches!(read_f32(&bytes), Err(Error::BadDtype { name, dtype }) if name == "h" && dtype == "F16")
        );

        let mut t = sample();
        t[1].1.data[2] = f32::NAN;
        assert!(matches!(
            read_f32(&write_f32(&t)),
            Err(Error::NonFiniteWeight { name, index: 2 }) if name == "layers.0.bias"
        ));
    }

    #[test]
    fn garbage_and_every_truncation_fail_cleanly() {
        assert!(matches!(read_f32(b""), Err(Error::BadSafetensors { .. })));
        assert!(matches!(
            read_f32(b"not a safetensors file at all"),
            Err(Error::BadSafetensors { .. })
        ));
        let bytes = write_f32(&sample());
        for len in 0..bytes.len() {
            assert!(
                matches!(read_f32(&bytes[..len]), Err(Error::BadSafetensors { .. })),
                "truncated to {len}"
            );
        }
        // A header length pointing far past the end.
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read_f32(&huge), Err(Error::BadSafetensors { .. })));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = read_f32(&bytes);
        }

        #[test]
        fn corrupted_files_never_panic(pos in 0usize..200, byte in proptest::prelude::any::<u8>()) {
            let mut bytes = write_f32(&sample());
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            let _ = read_f32(&bytes);
        }
    }
}
