//! The ABI of `chain/contracts` (OPG and Settlement), and what the node sends them.

use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::sol_types::SolCall;
use chain::block::{BlockHeader, CommitCertificate};

alloy::sol! {
    #[derive(Debug, PartialEq, Eq)]
    struct Header {
        uint64 height;
        bytes32 parent;
        address proposer;
        uint64 timestampMs;
        bytes32 recordsRoot;
        bytes32 txsRoot;
        bytes32 stateRoot;
        bytes32 lastCommitHash;
        bytes32 nextValidatorsHash;
        bytes32 anchorRecordsRoot;
        bytes32 anchorWithdrawalsRoot;
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Anchor {
        bytes32 blockHash;
        bytes32 stateRoot;
        bytes32 recordsRoot;
        bytes32 withdrawalsRoot;
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Deposit {
        address from;
        uint64 evmBlock;
        address nativeRecipient;
        uint96 amount;
    }

    interface ISettlement {
        function anchor(Header header, uint32 round, bytes[] signatures, address[] nextValidators, uint64[] nextPowers) external;
        function lastAnchoredHeight() external view returns (uint64);
        function opg() external view returns (address);
        function anchors(uint64 height) external view returns (Anchor memory);
        function validatorSetHash() external view returns (bytes32);
        function hashHeader(Header header) external pure returns (bytes32);
        function verifyInference(bytes32 leaf, bytes32[] proof, uint64 height) external view returns (bool);
        function deposit(uint256 amount, address nativeRecipient) external;
        function withdraw(bytes32 id, address recipient, uint256 amount, uint64 anchorHeight, bytes32[] proof) external;
        function depositWithAuthorization(address from, uint256 amount, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
        function depositCount() external view returns (uint256);
        function deposits(uint256 id) external view returns (Deposit memory);
        function withdrawn(bytes32 id) external view returns (bool);
        function withdrawalLeaf(bytes32 id, address recipient, uint256 amount) external pure returns (bytes32);

        event Anchored(uint64 indexed height, bytes32 blockHash, bytes32 stateRoot, bytes32 recordsRoot, bytes32 withdrawalsRoot);
        event ValidatorSetChanged(uint64 indexed height, bytes32 setHash, address[] validators, uint64[] powers);
        event Deposited(uint256 indexed id, address indexed from, address indexed nativeRecipient, uint256 amount);
        event Withdrawn(bytes32 indexed id, address indexed recipient, uint256 amount, uint64 anchorHeight);
    }

    interface IOPG {
        function balanceOf(address owner) external view returns (uint256);
        function totalSupply() external view returns (uint256);
        function approve(address spender, uint256 value) external returns (bool);
        function transfer(address to, uint256 value) external returns (bool);
        function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    }
}

impl From<&BlockHeader> for Header {
    fn from(h: &BlockHeader) -> Header {
        Header {
            height: h.height,
            parent: h.parent,
            proposer: h.proposer,
            timestampMs: h.timestamp_ms,
            recordsRoot: h.records_root,
            txsRoot: h.txs_root,
            stateRoot: h.state_root,
            lastCommitHash: h.last_commit_hash,
            nextValidatorsHash: h.next_validators_hash,
            anchorRecordsRoot: h.anchor_records_root,
            anchorWithdrawalsRoot: h.anchor_withdrawals_root,
        }
    }
}

/// The calldata that anchors `header` by its commit certificate: the precommits' signatures in
/// ascending validator order; when the header names another set than `known_set_hash` (the
/// contract's), the set `next` (the one the header names) goes along.
pub fn anchor_call(
    header: &BlockHeader,
    certificate: &CommitCertificate,
    known_set_hash: B256,
    next: &[(Address, u64)],
) -> Bytes {
    let mut votes: Vec<_> = certificate.votes.iter().collect();
    votes.sort_by_key(|v| v.vote.validator);
    votes.dedup_by_key(|v| v.vote.validator);
    let signatures = votes
        .iter()
        .map(|v| Bytes::copy_from_slice(&v.signature.0))
        .collect();
    let (next_validators, next_powers) = if header.next_validators_hash == known_set_hash {
        (Vec::new(), Vec::new())
    } else {
        let mut set = next.to_vec();
        set.sort_by_key(|(a, _)| *a);
        set.into_iter().unzip()
    };
    ISettlement::anchorCall {
        header: header.into(),
        round: certificate.round,
        signatures,
        nextValidators: next_validators,
        nextPowers: next_powers,
    }
    .abi_encode()
    .into()
}

/// Constructor arguments, ABI-encoded, for deploying `Settlement(opg, chain id, genesis hash,
/// validators, powers)` with the genesis set.
pub fn settlement_constructor(
    opg: Address,
    native_chain_id: u64,
    genesis_hash: B256,
    set: &[(Address, u64)],
) -> Vec<u8> {
    use alloy::sol_types::SolValue;
    let mut set = set.to_vec();
    set.sort_by_key(|(a, _)| *a);
    let (validators, powers): (Vec<Address>, Vec<u64>) = set.into_iter().unzip();
    (opg, native_chain_id, genesis_hash, validators, powers).abi_encode_params()
}

/// Constructor arguments of `OPG(holder)`.
pub fn opg_constructor(holder: Address) -> Vec<u8> {
    use alloy::sol_types::SolValue;
    (holder,).abi_encode_params()
}

/// 1,000,000,000 OPG in base units, as the token mints it.
pub fn total_supply() -> U256 {
    U256::from(chain::TOTAL_SUPPLY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chain::block::{SignedVote, Vote, VoteKind, validator_set_hash};
    use chain::signing::{Domain, seeded_key};

    /// The anchor call carries one signature per validator in ascending address order, the
    /// round, and the next set only when the header names a new one.
    #[test]
    fn anchor_calldata() {
        let keys: Vec<_> = (0..3).map(|i| seeded_key(77, i)).collect();
        let set: Vec<(Address, u64)> = keys.iter().map(|k| (k.address(), 5)).collect();
        let header = BlockHeader {
            height: 10,
            parent: B256::ZERO,
            proposer: keys[0].address(),
            timestamp_ms: 1,
            records_root: B256::ZERO,
            txs_root: B256::ZERO,
            state_root: B256::repeat_byte(1),
            last_commit_hash: B256::ZERO,
            next_validators_hash: validator_set_hash(&set),
            anchor_records_root: B256::repeat_byte(2),
            anchor_withdrawals_root: B256::ZERO,
        };
        let domain = Domain {
            chain_id: 1,
            salt: B256::ZERO,
            payments: None,
        };
        let votes: Vec<SignedVote> = keys
            .iter()
            .map(|k| {
                SignedVote::sign(
                    Vote {
                        height: 10,
                        round: 3,
                        kind: VoteKind::Precommit,
                        block: Some(header.hash()),
                        validator: k.address(),
                    },
                    k,
                    &domain,
                )
                .unwrap()
            })
            .collect();
        let cert = CommitCertificate {
            height: 10,
            round: 3,
            block_hash: header.hash(),
            votes,
        };
        let call = ISettlement::anchorCall::abi_decode(&anchor_call(
            &header,
            &cert,
            validator_set_hash(&set),
            &set,
        ))
        .unwrap();
        assert_eq!(call.round, 3);
        assert_eq!(call.header, Header::from(&header));
        assert_eq!(call.signatures.len(), 3);
        let mut order: Vec<Address> = keys.iter().map(|k| k.address()).collect();
        order.sort();
        for (sig, a) in call.signatures.iter().zip(&order) {
            let v = cert.votes.iter().find(|v| v.vote.validator == *a).unwrap();
            assert_eq!(sig.as_ref(), &v.signature.0[..]);
        }
        assert!(call.nextValidators.is_empty() && call.nextPowers.is_empty());
        // The contract knows another set: the header's goes along, sorted.
        let call = ISettlement::anchorCall::abi_decode(&anchor_call(
            &header,
            &cert,
            B256::repeat_byte(9),
            &set,
        ))
        .unwrap();
        assert_eq!(call.nextValidators, order);
        assert_eq!(call.nextPowers, vec![5, 5, 5]);
        // Garbage is not an anchor call.
        assert!(ISettlement::anchorCall::abi_decode(&[1, 2, 3]).is_err());
    }
}
