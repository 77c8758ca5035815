// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {OPG} from "./OPG.sol";

/// @title proofmesh on an EVM chain: anchors, inference verification and the OPG bridge
/// @notice Follows the proofmesh chain's validator set and accepts anchors of its blocks. The
/// proof of an anchor is the block's own commit certificate: the validators' precommits are
/// EIP-712 signatures (domain "proofmesh", "1", the proofmesh chain id, salt = its genesis
/// hash) over `ConsensusVote(height, round, kind, blockHash)`, and the block hash is the
/// EIP-712 struct hash of its header, so this contract recomputes both and counts the signers'
/// power; more than 2/3 of the set it knows is needed. A header names the set that decides the
/// next height (`nextValidatorsHash`): anchoring it with that set's list moves this contract to
/// it, so the set changes only as signed by more than 2/3 of the previous one.
///
/// Anchored headers carry two roots over everything since the previous anchor height, both
/// OpenZeppelin `MerkleProof` trees: `anchorRecordsRoot` (verified inference records' leaves)
/// and `anchorWithdrawalsRoot` (withdrawals to this chain).
contract Settlement {
    using SafeERC20 for IERC20;

    /// A proofmesh block header, as its validators hash it.
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

    /// What this contract keeps of an anchored header.
    struct Anchor {
        bytes32 blockHash;
        bytes32 stateRoot;
        bytes32 recordsRoot;
        bytes32 withdrawalsRoot;
    }

    bytes32 public constant HEADER_TYPEHASH = keccak256(
        "BlockHeader(uint64 height,bytes32 parent,address proposer,uint64 timestampMs,bytes32 recordsRoot,bytes32 txsRoot,bytes32 stateRoot,bytes32 lastCommitHash,bytes32 nextValidatorsHash,bytes32 anchorRecordsRoot,bytes32 anchorWithdrawalsRoot)"
    );
    bytes32 public constant VOTE_TYPEHASH =
        keccak256("ConsensusVote(uint64 height,uint32 round,uint8 kind,bytes32 blockHash)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,bytes32 salt)");
    /// `kind` of a precommit in `Vote`.
    uint8 public constant PRECOMMIT = 1;

    OPG public immutable opg;
    /// The proofmesh chain's EIP-712 domain separator, from its chain id and genesis hash.
    bytes32 public immutable nativeDomainSeparator;

    address[] private _validators;
    mapping(address => uint64) public powerOf;
    uint256 public totalPower;
    /// keccak256(abi.encode(validators, powers)), validators in ascending order.
    bytes32 public validatorSetHash;

    uint64 public lastAnchoredHeight;
    mapping(uint64 => Anchor) private _anchors;

    /// A deposit as the proofmesh chain credits it. Validators read these at the block
    /// `evm_confirmations` below the tip, so a deposit is credited only once that deep.
    struct Deposit {
        address from;
        uint64 evmBlock;
        address nativeRecipient;
        uint96 amount;
    }

    uint256 public depositCount;
    mapping(uint256 => Deposit) private _deposits;
    /// Withdrawal ids already paid out.
    mapping(bytes32 => bool) public withdrawn;

    event Anchored(
        uint64 indexed height, bytes32 blockHash, bytes32 stateRoot, bytes32 recordsRoot, bytes32 withdrawalsRoot
    );
    event ValidatorSetChanged(uint64 indexed height, bytes32 setHash, address[] validators, uint64[] powers);
    event Deposited(uint256 indexed id, address indexed from, address indexed nativeRecipient, uint256 amount);
    event Withdrawn(bytes32 indexed id, address indexed recipient, uint256 amount, uint64 anchorHeight);

    error EmptyValidatorSet();
    error ValidatorsNotSorted(uint256 index);
    error ZeroPower(address validator);
    error LengthMismatch();
    error HeightNotAfterLastAnchor(uint64 height, uint64 lastAnchored);
    error SignersNotSorted(uint256 index);
    error NotAValidator(address signer);
    error InsufficientPower(uint256 signed, uint256 total);
    error WrongValidatorSet(bytes32 named, bytes32 given);
    error NotAnchored(uint64 height);
    error AlreadyWithdrawn(bytes32 id);
    error InvalidProof();
    error ZeroAmount();
    error NoSuchDeposit(uint256 id);

    constructor(
        OPG opg_,
        uint64 nativeChainId,
        bytes32 genesisHash,
        address[] memory validators,
        uint64[] memory powers
    ) {
        opg = opg_;
        nativeDomainSeparator = keccak256(
            abi.encode(DOMAIN_TYPEHASH, keccak256("proofmesh"), keccak256("1"), uint256(nativeChainId), genesisHash)
        );
        _setValidators(0, validators, powers);
    }

    // ------------------------------------------------------------------ validator set

    /// @notice The validator set this contract checks anchors against.
    function validators() external view returns (address[] memory list, uint64[] memory powers) {
        list = _validators;
        powers = new uint64[](list.length);
        for (uint256 i = 0; i < list.length; i++) {
            powers[i] = powerOf[list[i]];
        }
    }

    /// @notice The hash a header names for a set (validators in ascending order).
    function hashValidatorSet(address[] memory validators_, uint64[] memory powers) public pure returns (bytes32) {
        return keccak256(abi.encode(validators_, powers));
    }

    function _setValidators(uint64 height, address[] memory list, uint64[] memory powers) private {
        if (list.length == 0) revert EmptyValidatorSet();
        if (list.length != powers.length) revert LengthMismatch();
        for (uint256 i = 0; i < _validators.length; i++) {
            delete powerOf[_validators[i]];
        }
        uint256 total;
        for (uint256 i = 0; i < list.length; i++) {
            if (i > 0 && list[i] <= list[i - 1]) revert ValidatorsNotSorted(i);
            if (powers[i] == 0) revert ZeroPower(list[i]);
            powerOf[list[i]] = powers[i];
            total += powers[i];
        }
        _validators = list;
        totalPower = total;
        validatorSetHash = hashValidatorSet(list, powers);
        emit ValidatorSetChanged(height, validatorSetHash, list, powers);
    }

    // ------------------------------------------------------------------ anchors

    /// @notice The EIP-712 struct hash of a header: the proofmesh block hash.
    function hashHeader(Header calldata h) public pure returns (bytes32) {
        return keccak256(
            abi.encode(
                HEADER_TYPEHASH,
                h.height,
                h.parent,
                h.proposer,
                h.timestampMs,
                h.recordsRoot,
                h.txsRoot,
                h.stateRoot,
                h.lastCommitHash,
                h.nextValidatorsHash,
                h.anchorRecordsRoot,
                h.anchorWithdrawalsRoot
            )
        );
    }

    /// @notice The digest a validator signs to precommit `blockHash` at `height` and `round`.
    function precommitDigest(uint64 height, uint32 round, bytes32 blockHash) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(VOTE_TYPEHASH, height, round, PRECOMMIT, blockHash));
        return keccak256(abi.encodePacked("\x19\x01", nativeDomainSeparator, structHash));
    }

    /// @notice Anchors `header`, decided at `round` with the precommit `signatures` (65 bytes
    /// each, their signers in ascending order). When the header names another set for the
    /// next height, `nextValidators` and `nextPowers` must be that set, and this contract
    /// moves to it; otherwise pass them empty.
    function anchor(
        Header calldata header,
        uint32 round,
        bytes[] calldata signatures,
        address[] calldata nextValidators,
        uint64[] calldata nextPowers
    ) external {
        if (header.height <= lastAnchoredHeight) {
            revert HeightNotAfterLastAnchor(header.height, lastAnchoredHeight);
        }
        bytes32 blockHash = hashHeader(header);
        _checkCommit(header.height, round, blockHash, signatures);
        lastAnchoredHeight = header.height;
        _anchors[header.height] = Anchor({
            blockHash: blockHash,
            stateRoot: header.stateRoot,
            recordsRoot: header.anchorRecordsRoot,
            withdrawalsRoot: header.anchorWithdrawalsRoot
        });
        emit Anchored(
            header.height, blockHash, header.stateRoot, header.anchorRecordsRoot, header.anchorWithdrawalsRoot
        );
        if (header.nextValidatorsHash != validatorSetHash) {
            bytes32 given = hashValidatorSet(nextValidators, nextPowers);
            if (given != header.nextValidatorsHash) revert WrongValidatorSet(header.nextValidatorsHash, given);
            _setValidators(header.height, nextValidators, nextPowers);
        }
    }

    function _checkCommit(uint64 height, uint32 round, bytes32 blockHash, bytes[] calldata signatures) private view {
        bytes32 digest = precommitDigest(height, round, blockHash);
        uint256 signed;
        address previous;
        for (uint256 i = 0; i < signatures.length; i++) {
            address signer = ECDSA.recover(digest, signatures[i]);
            // Ascending signers: none counts twice.
            if (signer <= previous) revert SignersNotSorted(i);
            previous = signer;
            uint64 power = powerOf[signer];
            if (power == 0) revert NotAValidator(signer);
            signed += power;
        }
        if (signed * 3 <= totalPower * 2) revert InsufficientPower(signed, totalPower);
    }

    /// @notice The anchor at `height` (zero hashes when there is none).
    function anchors(uint64 height) external view returns (Anchor memory) {
        return _anchors[height];
    }

    /// @notice Whether `leaf` (an inference record's leaf, as the proofmesh chain computes it)
    /// is in the records root anchored at `height`, by an OpenZeppelin Merkle `proof`.
    function verifyInference(bytes32 leaf, bytes32[] calldata proof, uint64 height) external view returns (bool) {
        bytes32 root = _anchors[height].recordsRoot;
        return root != bytes32(0) && MerkleProof.verifyCalldata(proof, root, leaf);
    }

    // ------------------------------------------------------------------ bridge

    /// @notice Locks `amount` OPG of the caller (approved first) for `nativeRecipient` on the
    /// proofmesh chain, which credits it once the deposit is `evm_confirmations` deep.
    function deposit(uint256 amount, address nativeRecipient) external {
        if (amount == 0) revert ZeroAmount();
        IERC20(opg).safeTransferFrom(msg.sender, address(this), amount);
        _record(msg.sender, nativeRecipient, amount);
    }

    /// @notice Locks `amount` OPG of `from` by its EIP-3009 `ReceiveWithAuthorization` to this
    /// contract (anyone may submit it: an x402 facilitator, say) and credits `from`'s own
    /// account on the proofmesh chain: the submitter cannot redirect it.
    function depositWithAuthorization(
        address from,
        uint256 amount,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        bytes calldata signature
    ) external {
        if (amount == 0) revert ZeroAmount();
        opg.receiveWithAuthorization(from, address(this), amount, validAfter, validBefore, nonce, signature);
        _record(from, from, amount);
    }

    /// @notice Deposit `id` (from 0, in order): who locked, for whom, how much, in which block.
    function deposits(uint256 id) external view returns (Deposit memory) {
        if (id >= depositCount) revert NoSuchDeposit(id);
        return _deposits[id];
    }

    function _record(address from, address nativeRecipient, uint256 amount) private {
        uint256 id = depositCount++;
        // casting to 'uint64' is safe because block numbers stay far below 2^64, and to
        // 'uint96' because the whole OPG supply (1e27 base units) is below 2^96
        // forge-lint: disable-next-line(unsafe-typecast)
        _deposits[id] = Deposit(from, uint64(block.number), nativeRecipient, uint96(amount));
        emit Deposited(id, from, nativeRecipient, amount);
    }

    /// @notice The leaf of a withdrawal in an anchored withdrawals root.
    function withdrawalLeaf(bytes32 id, address recipient, uint256 amount) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(id, recipient, amount))));
    }

    /// @notice Releases a withdrawal made on the proofmesh chain (its id, recipient and amount)
    /// that is in the withdrawals root anchored at `anchorHeight`, once. Anyone may submit it;
    /// the tokens go to `recipient`.
    function withdraw(bytes32 id, address recipient, uint256 amount, uint64 anchorHeight, bytes32[] calldata proof)
        external
    {
        if (withdrawn[id]) revert AlreadyWithdrawn(id);
        bytes32 root = _anchors[anchorHeight].withdrawalsRoot;
        if (root == bytes32(0)) revert NotAnchored(anchorHeight);
        if (!MerkleProof.verifyCalldata(proof, root, withdrawalLeaf(id, recipient, amount))) revert InvalidProof();
        withdrawn[id] = true;
        IERC20(opg).safeTransfer(recipient, amount);
        emit Withdrawn(id, recipient, amount, anchorHeight);
    }
}
