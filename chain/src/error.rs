use alloy::primitives::Address;

/// Everything that can go wrong in the chain rules and the chain store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("invalid signature: {0}")]
    BadSignature(String),
    #[error("signature is from {recovered}, expected {expected}")]
    WrongSigner {
        expected: Address,
        recovered: Address,
    },
    #[error("unknown model {0}")]
    UnknownModel(kernels::ModelId),
    #[error("executor {0} is not a registered inference node")]
    UnknownExecutor(Address),
    #[error("invalid genesis: {0}")]
    Genesis(String),
    #[error("invalid block: {0}")]
    InvalidBlock(String),
    #[error("invalid commit certificate: {0}")]
    InvalidCertificate(String),
    #[error("invalid value for {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("storage: {0}")]
    Storage(#[from] rocksdb::Error),
    #[error("store is inconsistent: {0}")]
    Corrupt(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
