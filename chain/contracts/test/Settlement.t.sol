// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.sol";
import {OPG} from "../src/OPG.sol";
import {Settlement} from "../src/Settlement.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";

/// A proofmesh network as the contract sees it: validator keys, headers, commit certificates
/// and OpenZeppelin-compatible Merkle trees.
abstract contract Network is Base {
    uint64 constant NATIVE_CHAIN = 4242;
    bytes32 constant GENESIS = keccak256("genesis");

    /// Keys sorted by address, with powers.
    function set(uint256 first, uint256 n, uint64 power)
        internal
        pure
        returns (uint256[] memory keys, address[] memory addrs, uint64[] memory powers)
    {
        keys = new uint256[](n);
        addrs = new address[](n);
        powers = new uint64[](n);
        for (uint256 i = 0; i < n; i++) {
            keys[i] = first + i;
        }
        // Insertion sort by address.
        for (uint256 i = 1; i < n; i++) {
            uint256 k = keys[i];
            uint256 j = i;
            while (j > 0 && vm.addr(keys[j - 1]) > vm.addr(k)) {
                keys[j] = keys[j - 1];
                j--;
            }
            keys[j] = k;
        }
        for (uint256 i = 0; i < n; i++) {
            addrs[i] = vm.addr(keys[i]);
            // casting to 'uint64' is safe because i counts a handful of validators
            // forge-lint: disable-next-line(unsafe-typecast)
            powers[i] = power + uint64(i);
        }
    }

    function header(uint64 height, bytes32 nextSet, bytes32 records, bytes32 withdrawals)
        internal
        pure
        returns (Settlement.Header memory h)
    {
        h.height = height;
        h.parent = keccak256(abi.encode("parent", height));
        h.proposer = address(0x1234);
        h.timestampMs = 1_700_000_000_000 + height;
        h.recordsRoot = keccak256(abi.encode("records", height));
        h.txsRoot = keccak256(abi.encode("txs", height));
        h.stateRoot = keccak256(abi.encode("state", height));
        h.lastCommitHash = keccak256(abi.encode("commit", height));
        h.nextValidatorsHash = nextSet;
        h.anchorRecordsRoot = records;
        h.anchorWithdrawalsRoot = withdrawals;
    }

    /// The precommits of `keys` (already in address order) for `h` at `round`.
    function commit(Settlement s, Settlement.Header memory h, uint32 round, uint256[] memory keys)
        internal
        view
        returns (bytes[] memory sigs)
    {
        bytes32 digest = s.precommitDigest(h.height, round, s.hashHeader(h));
        sigs = new bytes[](keys.length);
        for (uint256 i = 0; i < keys.length; i++) {
            sigs[i] = signature(keys[i], digest);
        }
    }

    function pick(uint256[] memory keys, uint256 mask) internal pure returns (uint256[] memory out) {
        uint256 n;
        for (uint256 i = 0; i < keys.length; i++) {
            if ((mask >> i) & 1 == 1) n++;
        }
        out = new uint256[](n);
        n = 0;
        for (uint256 i = 0; i < keys.length; i++) {
            if ((mask >> i) & 1 == 1) out[n++] = keys[i];
        }
    }

    function hashPair(bytes32 a, bytes32 b) internal pure returns (bytes32) {
        return a < b ? keccak256(abi.encode(a, b)) : keccak256(abi.encode(b, a));
    }

    /// Root of four leaves and the proof of leaf `i`.
    function tree4(bytes32[4] memory leaves, uint256 i) internal pure returns (bytes32 root, bytes32[] memory proof) {
        bytes32 left = hashPair(leaves[0], leaves[1]);
        bytes32 right = hashPair(leaves[2], leaves[3]);
        root = hashPair(left, right);
        proof = new bytes32[](2);
        proof[0] = leaves[i ^ 1];
        proof[1] = i < 2 ? right : left;
    }

    bytes[] internal noSigs;
    address[] internal noAddrs;
    uint64[] internal noPowers;
}

contract SettlementTest is Network {
    OPG token;
    Settlement s;
    uint256[] keys;
    address[] addrs;
    uint64[] powers;
    bytes32 setHash;
    address holder = address(0xB0B);

    function setUp() public {
        token = new OPG(holder);
        // Powers 10, 11, 12, 13 (46 in all; more than 2/3 is 31 or more).
        (keys, addrs, powers) = set(0x100, 4, 10);
        s = new Settlement(token, NATIVE_CHAIN, GENESIS, addrs, powers);
        setHash = s.hashValidatorSet(addrs, powers);
    }

    /// The header, set and precommits of the proofmesh node's `block::evm_agreement` test
    /// (chain id 4242, genesis hash keccak256("genesis")): the contract computes the same block
    /// hash, set hash and vote digest, and accepts the node's signatures.
    function test_agreesWithTheProofmeshNode() public {
        address[] memory a = new address[](3);
        a[0] = 0x0D8bfe2f039b5bA384287B7358f99483785BD13a;
        a[1] = 0x88B39A4537FC887855e59c5da9bB8683E2F0BA37;
        a[2] = 0xe6096DA3F33cC1641c583cFd216A781cc71376a7;
        uint64[] memory p = new uint64[](3);
        p[0] = 12;
        p[1] = 10;
        p[2] = 11;
        Settlement node = new Settlement(token, 4242, keccak256("genesis"), a, p);
        bytes32 setHash_ = 0xa80275b4994bf71d4669924088703eb5806e49a58ff4eb73be6a4e1cd7373217;
        assertEq(node.validatorSetHash(), setHash_, "set hash");
        Settlement.Header memory h;
        h.height = 20;
        h.parent = keccak256("parent");
        h.proposer = address(bytes20(hex"1212121212121212121212121212121212121212"));
        h.timestampMs = 1_700_000_000_000;
        h.recordsRoot = keccak256("records");
        h.txsRoot = keccak256("txs");
        h.stateRoot = keccak256("state");
        h.lastCommitHash = keccak256("commit");
        h.nextValidatorsHash = setHash_;
        h.anchorRecordsRoot = keccak256("anchor records");
        bytes32 blockHash = 0xe62518cb98fee6492f48bdfdaaf42884f1482449040a79acc86a87cb0562d9fc;
        assertEq(node.hashHeader(h), blockHash, "block hash");
        assertEq(
            node.precommitDigest(20, 2, blockHash),
            0xe7a60bbaa1032d8574f3bc1e4cefe84019a4137293291df670c73f4be75e44a0,
            "precommit digest"
        );
        bytes[] memory sigs = new bytes[](3);
        sigs[0] =
            hex"5dffa0beaab90bf504fb94f17e8a10fdc08dc1b8cda5a5ea7123342a276ae4004ba1a466afea85d1f2950738673ce68b832ec199e23f24d1feabb3fe0df6122e1c";
        sigs[1] =
            hex"93d3a76ff616bc43bc8490d4f736e972f942627e0de05fded8bf0a8ed070c29c586b0514f90e7cf86cb007c2fc5d8cb1d5a6ac3a0888fc9184226257903438ee1b";
        sigs[2] =
            hex"517987e4103d2da6b8256b61630386acce798876bd67337e4b6f737cf5577f0c4e57033d7e786f7ccbef61a236397aed6d325c1f77bac7b91f2168f7991557e01c";
        node.anchor(h, 2, sigs, noAddrs, noPowers);
        assertEq(node.anchors(20).blockHash, blockHash, "anchored");
        assertTrue(
            node.verifyInference(keccak256("anchor records"), new bytes32[](0), 20),
            "a one-leaf tree: its root is its leaf"
        );
        assertEq(
            node.withdrawalLeaf(
                keccak256("withdrawal"), address(bytes20(hex"3434343434343434343434343434343434343434")), 5 ether
            ),
            0xe17f3fa9259933c5a72597883a0e8492f4c9caefc64baec39f6503399a48fb3e,
            "withdrawal leaf"
        );
    }

    function test_deployedWithTheGenesisSet() public view {
        (address[] memory list, uint64[] memory p) = s.validators();
        assertEq(list.length, 4, "validators");
        assertEq(p[3], 13, "power");
        assertEq(s.totalPower(), 46, "total");
        assertEq(s.validatorSetHash(), setHash, "set hash");
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,bytes32 salt)"),
                keccak256("proofmesh"),
                keccak256("1"),
                uint256(NATIVE_CHAIN),
                GENESIS
            )
        );
        assertEq(s.nativeDomainSeparator(), domain, "proofmesh domain");
    }

    function test_refusesABadGenesisSet() public {
        address[] memory unsorted = new address[](2);
        unsorted[0] = addrs[1];
        unsorted[1] = addrs[0];
        uint64[] memory two = new uint64[](2);
        two[0] = 1;
        two[1] = 1;
        vm.expectRevert(abi.encodeWithSelector(Settlement.ValidatorsNotSorted.selector, 1));
        new Settlement(token, NATIVE_CHAIN, GENESIS, unsorted, two);
        vm.expectRevert(Settlement.EmptyValidatorSet.selector);
        new Settlement(token, NATIVE_CHAIN, GENESIS, noAddrs, noPowers);
        uint64[] memory one = new uint64[](1);
        vm.expectRevert(Settlement.LengthMismatch.selector);
        new Settlement(token, NATIVE_CHAIN, GENESIS, unsorted, one);
        address[] memory single = new address[](1);
        single[0] = addrs[0];
        vm.expectRevert(abi.encodeWithSelector(Settlement.ZeroPower.selector, addrs[0]));
        new Settlement(token, NATIVE_CHAIN, GENESIS, single, one);
    }

    function test_anchorsWithMoreThanTwoThirds() public {
        Settlement.Header memory h = header(20, setHash, keccak256("r"), keccak256("w"));
        // 11 + 12 + 13 = 36 of 46.
        bytes[] memory sigs = commit(s, h, 2, pick(keys, 0xE));
        vm.expectEmit();
        emit Settlement.Anchored(20, s.hashHeader(h), h.stateRoot, h.anchorRecordsRoot, h.anchorWithdrawalsRoot);
        s.anchor(h, 2, sigs, noAddrs, noPowers);
        assertEq(s.lastAnchoredHeight(), 20, "height");
        Settlement.Anchor memory a = s.anchors(20);
        assertEq(a.blockHash, s.hashHeader(h), "block hash");
        assertEq(a.recordsRoot, keccak256("r"), "records root");
        assertEq(a.stateRoot, h.stateRoot, "state root");
    }

    function test_refusesTwoThirdsOrLess() public {
        Settlement.Header memory h = header(20, setHash, 0, 0);
        // 10 + 11 + 12 = 33: 99 > 92, enough; 10 + 11 = 21: not.
        s.anchor(h, 0, commit(s, h, 0, pick(keys, 0x7)), noAddrs, noPowers);
        h = header(40, setHash, 0, 0);
        bytes[] memory thin = commit(s, h, 0, pick(keys, 0x3));
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientPower.selector, 21, 46));
        s.anchor(h, 0, thin, noAddrs, noPowers);
        // Exactly two thirds is not more than two thirds.
        (uint256[] memory k3, address[] memory a3, uint64[] memory p3) = set(0x200, 3, 1);
        p3[0] = 1;
        p3[1] = 1;
        p3[2] = 1;
        Settlement three = new Settlement(token, NATIVE_CHAIN, GENESIS, a3, p3);
        h = header(1, three.validatorSetHash(), 0, 0);
        bytes[] memory twoOfThree = commit(three, h, 0, pick(k3, 0x3));
        vm.expectRevert(abi.encodeWithSelector(Settlement.InsufficientPower.selector, 2, 3));
        three.anchor(h, 0, twoOfThree, noAddrs, noPowers);
        three.anchor(h, 0, commit(three, h, 0, k3), noAddrs, noPowers);
    }

    function test_refusesReplayedAndOutOfOrderHeights() public {
        Settlement.Header memory h = header(20, setHash, 0, 0);
        bytes[] memory sigs = commit(s, h, 0, keys);
        s.anchor(h, 0, sigs, noAddrs, noPowers);
        vm.expectRevert(abi.encodeWithSelector(Settlement.HeightNotAfterLastAnchor.selector, 20, 20));
        s.anchor(h, 0, sigs, noAddrs, noPowers);
        Settlement.Header memory older = header(10, setHash, 0, 0);
        bytes[] memory olderSigs = commit(s, older, 0, keys);
        vm.expectRevert(abi.encodeWithSelector(Settlement.HeightNotAfterLastAnchor.selector, 10, 20));
        s.anchor(older, 0, olderSigs, noAddrs, noPowers);
    }

    function test_refusesBadSignatures() public {
        Settlement.Header memory h = header(20, setHash, 0, 0);
        bytes[] memory sigs = commit(s, h, 0, keys);
        // A field changed after signing: the signatures recover other addresses.
        Settlement.Header memory tampered = header(20, setHash, keccak256("forged"), 0);
        vm.expectRevert();
        s.anchor(tampered, 0, sigs, noAddrs, noPowers);
        // Another round than signed.
        vm.expectRevert();
        s.anchor(h, 1, sigs, noAddrs, noPowers);
        assertEq(s.lastAnchoredHeight(), 0, "nothing anchored");
        s.anchor(h, 0, sigs, noAddrs, noPowers);
    }

    function test_refusesStrangersAndRepeatedSigners() public {
        Settlement.Header memory h = header(20, setHash, 0, 0);
        bytes[] memory sigs = commit(s, h, 0, keys);
        // A non-validator among the signers.
        uint256[] memory withStranger = new uint256[](4);
        (uint256[] memory stranger,,) = set(0x999, 1, 1);
        withStranger[0] = keys[1];
        withStranger[1] = keys[2];
        withStranger[2] = keys[3];
        withStranger[3] = stranger[0];
        bytes[] memory ss = commit(s, h, 0, withStranger);
        // Reorder the four signatures by signer address.
        address[] memory signers = new address[](4);
        for (uint256 i = 0; i < 4; i++) {
            signers[i] = vm.addr(withStranger[i]);
        }
        for (uint256 i = 1; i < 4; i++) {
            for (uint256 j = i; j > 0 && signers[j - 1] > signers[j]; j--) {
                (signers[j - 1], signers[j]) = (signers[j], signers[j - 1]);
                (ss[j - 1], ss[j]) = (ss[j], ss[j - 1]);
            }
        }
        vm.expectRevert(abi.encodeWithSelector(Settlement.NotAValidator.selector, vm.addr(stranger[0])));
        s.anchor(h, 0, ss, noAddrs, noPowers);
        // The same signer twice, or out of order.
        bytes[] memory dup = new bytes[](4);
        dup[0] = sigs[1];
        dup[1] = sigs[1];
        dup[2] = sigs[2];
        dup[3] = sigs[3];
        vm.expectRevert(abi.encodeWithSelector(Settlement.SignersNotSorted.selector, 1));
        s.anchor(h, 0, dup, noAddrs, noPowers);
        bytes[] memory reversed = new bytes[](2);
        reversed[0] = sigs[3];
        reversed[1] = sigs[2];
        vm.expectRevert(abi.encodeWithSelector(Settlement.SignersNotSorted.selector, 1));
        s.anchor(h, 0, reversed, noAddrs, noPowers);
        assertEq(s.lastAnchoredHeight(), 0, "nothing anchored");
    }

    function test_refusesGarbageMalleableAndForeignSignatures() public {
        Settlement.Header memory h = header(20, setHash, 0, 0);
        bytes[] memory sigs = commit(s, h, 0, keys);
        // Garbage and malleable signatures.
        bytes[] memory garbage = new bytes[](1);
        garbage[0] = hex"00112233";
        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignatureLength.selector, 4));
        s.anchor(h, 0, garbage, noAddrs, noPowers);
        bytes memory high = sigs[0];
        bytes32 sv;
        assembly {
            sv := mload(add(high, 64))
        }
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes32 flipped = bytes32(n - uint256(sv));
        bytes memory malleable = bytes.concat(bytes32(0), flipped, bytes1(0));
        for (uint256 i = 0; i < 32; i++) {
            malleable[i] = high[i];
        }
        malleable[64] = high[64] == bytes1(uint8(27)) ? bytes1(uint8(28)) : bytes1(uint8(27));
        bytes[] memory mall = new bytes[](1);
        mall[0] = malleable;
        vm.expectRevert(abi.encodeWithSelector(ECDSA.ECDSAInvalidSignatureS.selector, flipped));
        s.anchor(h, 0, mall, noAddrs, noPowers);
        // Signed for another proofmesh network (other genesis hash).
        Settlement other = new Settlement(token, NATIVE_CHAIN, keccak256("other genesis"), addrs, powers);
        bytes[] memory foreign = commit(other, h, 0, keys);
        vm.expectRevert();
        s.anchor(h, 0, foreign, noAddrs, noPowers);
        // None of it anchored anything.
        assertEq(s.lastAnchoredHeight(), 0, "nothing anchored");
        s.anchor(h, 0, sigs, noAddrs, noPowers);
    }

    /// Two of the old validators and three newcomers, power 20 each.
    function newSet() internal view returns (uint256[] memory nk, address[] memory na, uint64[] memory np) {
        (uint256[] memory newcomers,,) = set(0x300, 3, 5);
        nk = new uint256[](5);
        nk[0] = keys[2];
        nk[1] = keys[3];
        nk[2] = newcomers[0];
        nk[3] = newcomers[1];
        nk[4] = newcomers[2];
        for (uint256 i = 1; i < 5; i++) {
            for (uint256 j = i; j > 0 && vm.addr(nk[j - 1]) > vm.addr(nk[j]); j--) {
                (nk[j - 1], nk[j]) = (nk[j], nk[j - 1]);
            }
        }
        na = new address[](5);
        np = new uint64[](5);
        for (uint256 i = 0; i < 5; i++) {
            na[i] = vm.addr(nk[i]);
            np[i] = 20;
        }
    }

    function test_theSetChangesOnlyAsTheCurrentSetSigns() public {
        (uint256[] memory nk, address[] memory na, uint64[] memory np) = newSet();
        bytes32 next = s.hashValidatorSet(na, np);
        Settlement.Header memory h = header(20, next, 0, 0);
        bytes[] memory byOld = commit(s, h, 0, keys);
        // The header names the new set: it must be given, and be the one named.
        vm.expectRevert(
            abi.encodeWithSelector(Settlement.WrongValidatorSet.selector, next, s.hashValidatorSet(noAddrs, noPowers))
        );
        s.anchor(h, 0, byOld, noAddrs, noPowers);
        np[0] = 21;
        vm.expectRevert(abi.encodeWithSelector(Settlement.WrongValidatorSet.selector, next, s.hashValidatorSet(na, np)));
        s.anchor(h, 0, byOld, na, np);
        np[0] = 20;
        // Signed by the newcomers alone (not the current set): refused.
        bytes[] memory byNew = commit(s, h, 0, nk);
        vm.expectRevert();
        s.anchor(h, 0, byNew, na, np);
        vm.expectEmit();
        emit Settlement.ValidatorSetChanged(20, next, na, np);
        s.anchor(h, 0, byOld, na, np);
        assertEq(s.validatorSetHash(), next, "moved to the new set");
        assertEq(s.totalPower(), 100, "new total");
        assertEq(s.powerOf(addrs[0]), 0, "left the set");
        // From now on the new set signs; the old one cannot.
        h = header(40, next, 0, 0);
        byOld = commit(s, h, 0, keys);
        vm.expectRevert();
        s.anchor(h, 0, byOld, noAddrs, noPowers);
        s.anchor(h, 0, commit(s, h, 0, nk), noAddrs, noPowers);
        assertEq(s.lastAnchoredHeight(), 40, "anchored by the new set");
    }

    function test_verifyInference() public {
        bytes32[4] memory leaves = [keccak256("a"), keccak256("b"), keccak256("c"), keccak256("d")];
        (bytes32 root, bytes32[] memory proof) = tree4(leaves, 2);
        assertTrue(!s.verifyInference(leaves[2], proof, 20), "not anchored yet");
        Settlement.Header memory h = header(20, setHash, root, 0);
        s.anchor(h, 0, commit(s, h, 0, keys), noAddrs, noPowers);
        assertTrue(s.verifyInference(leaves[2], proof, 20), "anchored leaf");
        for (uint256 i = 0; i < 4; i++) {
            (, bytes32[] memory p) = tree4(leaves, i);
            assertTrue(s.verifyInference(leaves[i], p, 20), "every leaf");
        }
        assertTrue(!s.verifyInference(keccak256("forged"), proof, 20), "forged leaf");
        bytes32[] memory bad = new bytes32[](2);
        bad[0] = proof[0];
        bad[1] = keccak256("x");
        assertTrue(!s.verifyInference(leaves[2], bad, 20), "forged proof");
        assertTrue(!s.verifyInference(leaves[2], proof, 21), "another height");
    }

    function test_depositsLockAndAnnounce() public {
        address nativeAccount = address(0xAAAA);
        vm.prank(holder);
        token.approve(address(s), 100 ether);
        vm.expectEmit();
        emit Settlement.Deposited(0, holder, nativeAccount, 60 ether);
        vm.prank(holder);
        s.deposit(60 ether, nativeAccount);
        assertEq(token.balanceOf(address(s)), 60 ether, "locked");
        assertEq(s.depositCount(), 1, "count");
        Settlement.Deposit memory d = s.deposits(0);
        assertEq(d.from, holder, "from");
        assertEq(d.nativeRecipient, nativeAccount, "recipient");
        assertEq(uint256(d.amount), 60 ether, "amount");
        assertEq(uint256(d.evmBlock), block.number, "block");
        vm.expectRevert(abi.encodeWithSelector(Settlement.NoSuchDeposit.selector, 1));
        s.deposits(1);
        vm.prank(holder);
        vm.expectRevert(Settlement.ZeroAmount.selector);
        s.deposit(0, nativeAccount);
        // Beyond the allowance.
        vm.prank(holder);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(s), 40 ether, 41 ether)
        );
        s.deposit(41 ether, nativeAccount);
    }

    function test_depositWithAuthorizationCreditsThePayerOnly() public {
        uint256 payerKey = 0xCAFE;
        address payer = vm.addr(payerKey);
        vm.prank(holder);
        assertTrue(token.transfer(payer, 10 ether), "transfer");
        bytes32 nonce = keccak256("job request");
        uint256 before = block.timestamp + 300;
        bytes32 structHash = keccak256(
            abi.encode(token.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(), payer, address(s), 4 ether, 0, before, nonce)
        );
        bytes memory sig =
            signature(payerKey, keccak256(abi.encodePacked("\x19\x01", token.DOMAIN_SEPARATOR(), structHash)));
        vm.expectEmit();
        emit Settlement.Deposited(0, payer, payer, 4 ether);
        vm.prank(address(0xFAC111));
        s.depositWithAuthorization(payer, 4 ether, 0, before, nonce, sig);
        assertEq(token.balanceOf(address(s)), 4 ether, "locked");
        assertEq(token.balanceOf(payer), 6 ether, "paid");
        Settlement.Deposit memory d = s.deposits(0);
        assertEq(d.from, payer, "from");
        assertEq(d.nativeRecipient, payer, "credited to the payer");
        assertEq(uint256(d.amount), 4 ether, "amount");
        vm.expectRevert(abi.encodeWithSelector(OPG.AuthorizationAlreadyUsed.selector, payer, nonce));
        s.depositWithAuthorization(payer, 4 ether, 0, before, nonce, sig);
        // Another amount than signed.
        vm.expectRevert(OPG.InvalidAuthorizationSignature.selector);
        s.depositWithAuthorization(payer, 5 ether, 0, before, keccak256("other"), sig);
    }

    function test_withdrawalsPayOnceAgainstAnAnchoredRoot() public {
        vm.prank(holder);
        token.approve(address(s), 100 ether);
        vm.prank(holder);
        s.deposit(100 ether, address(0xAAAA));
        address alice = address(0xA11CE);
        bytes32[4] memory leaves = [
            s.withdrawalLeaf(bytes32(uint256(1)), alice, 30 ether),
            s.withdrawalLeaf(bytes32(uint256(2)), address(0xB), 5 ether),
            s.withdrawalLeaf(bytes32(uint256(3)), address(0xC), 5 ether),
            s.withdrawalLeaf(bytes32(uint256(4)), address(0xD), 5 ether)
        ];
        (bytes32 root, bytes32[] memory proof) = tree4(leaves, 0);
        vm.expectRevert(abi.encodeWithSelector(Settlement.NotAnchored.selector, 20));
        s.withdraw(bytes32(uint256(1)), alice, 30 ether, 20, proof);
        Settlement.Header memory h = header(20, setHash, 0, root);
        s.anchor(h, 0, commit(s, h, 0, keys), noAddrs, noPowers);
        // Another amount, recipient or id than anchored.
        vm.expectRevert(Settlement.InvalidProof.selector);
        s.withdraw(bytes32(uint256(1)), alice, 31 ether, 20, proof);
        vm.expectRevert(Settlement.InvalidProof.selector);
        s.withdraw(bytes32(uint256(1)), address(0xBAD), 30 ether, 20, proof);
        vm.expectRevert(Settlement.InvalidProof.selector);
        s.withdraw(bytes32(uint256(9)), alice, 30 ether, 20, proof);
        vm.expectEmit();
        emit Settlement.Withdrawn(bytes32(uint256(1)), alice, 30 ether, 20);
        s.withdraw(bytes32(uint256(1)), alice, 30 ether, 20, proof);
        assertEq(token.balanceOf(alice), 30 ether, "paid");
        assertEq(token.balanceOf(address(s)), 70 ether, "released");
        vm.expectRevert(abi.encodeWithSelector(Settlement.AlreadyWithdrawn.selector, bytes32(uint256(1))));
        s.withdraw(bytes32(uint256(1)), alice, 30 ether, 20, proof);
    }
}

/// Random deposits and withdrawals through anchored roots, with the ledger of what the
/// proofmesh side would hold.
contract BridgeHandler is Network {
    OPG public immutable token;
    Settlement public immutable s;
    uint256[] private keys;
    address[] public holders;
    uint256 public deposited;
    uint256 public withdrawnTotal;
    uint256 public doubleWithdrawals;
    uint64 public height;
    uint256 private ids;

    struct Claim {
        bytes32 id;
        address to;
        uint256 amount;
        uint64 height;
        bytes32[] proof;
    }
    Claim[] private paid;

    constructor(OPG token_, Settlement s_, uint256[] memory keys_, address[] memory holders_) {
        token = token_;
        s = s_;
        keys = keys_;
        holders = holders_;
    }

    function deposit(uint256 who, uint256 amount) external {
        address from = holders[who % holders.length];
        amount = bound(amount, 1, 1_000 ether);
        if (token.balanceOf(from) < amount) return;
        vm.startPrank(from);
        token.approve(address(s), amount);
        s.deposit(amount, from);
        vm.stopPrank();
        deposited += amount;
    }

    /// Anchors a root of four withdrawals (what the proofmesh side released) and pays one.
    function withdraw(uint256 who, uint256 amount, uint256 which) external {
        uint256 locked = deposited - withdrawnTotal;
        if (locked == 0) return;
        amount = bound(amount, 1, locked);
        address to = holders[who % holders.length];
        which %= 4;
        (bytes32 id, bytes32[] memory proof) = anchorWithdrawals(to, amount, which);
        s.withdraw(id, to, amount, height, proof);
        withdrawnTotal += amount;
        paid.push();
        Claim storage c = paid[paid.length - 1];
        c.id = id;
        c.to = to;
        c.amount = amount;
        c.height = height;
        c.proof = proof;
    }

    /// Anchors, at the next height, a root of four withdrawals of `amount` to `to`; the id
    /// and proof of the one at `which`.
    function anchorWithdrawals(address to, uint256 amount, uint256 which)
        internal
        returns (bytes32 id, bytes32[] memory proof)
    {
        bytes32[4] memory leaves;
        for (uint256 i = 0; i < 4; i++) {
            bytes32 this_ = bytes32(++ids);
            if (i == which) id = this_;
            leaves[i] = s.withdrawalLeaf(this_, to, amount);
        }
        bytes32 root;
        (root, proof) = tree4(leaves, which);
        height += 10;
        Settlement.Header memory h = header(height, s.validatorSetHash(), 0, root);
        s.anchor(h, 0, commit(s, h, 0, keys), noAddrs, noPowers);
    }

    /// Tries a paid withdrawal again: it must not pay.
    function withdrawAgain(uint256 i) external {
        if (paid.length == 0) return;
        Claim storage c = paid[i % paid.length];
        try s.withdraw(c.id, c.to, c.amount, c.height, c.proof) {
            doubleWithdrawals++;
        } catch {}
    }

    function holderCount() external view returns (uint256) {
        return holders.length;
    }
}

contract BridgeInvariantTest is Network {
    OPG token;
    Settlement s;
    BridgeHandler handler;

    function setUp() public {
        (uint256[] memory keys, address[] memory addrs, uint64[] memory powers) = set(0x100, 4, 10);
        address[] memory holders = new address[](3);
        holders[0] = address(0x1001);
        holders[1] = address(0x1002);
        holders[2] = address(0x1003);
        token = new OPG(holders[0]);
        s = new Settlement(token, NATIVE_CHAIN, GENESIS, addrs, powers);
        handler = new BridgeHandler(token, s, keys, holders);
        vm.startPrank(holders[0]);
        assertTrue(token.transfer(holders[1], 1_000_000 ether), "transfer");
        assertTrue(token.transfer(holders[2], 1_000_000 ether), "transfer");
        vm.stopPrank();
        targetContract(address(handler));
    }

    /// The supply never changes; the bridge holds exactly what was deposited and not yet
    /// withdrawn; everything else is with the holders.
    function invariant_bridgeConservesTheSupply() public view {
        assertEq(token.totalSupply(), 1_000_000_000 ether, "supply");
        assertEq(token.balanceOf(address(s)), handler.deposited() - handler.withdrawnTotal(), "locked");
        uint256 outside;
        for (uint256 i = 0; i < handler.holderCount(); i++) {
            outside += token.balanceOf(handler.holders(i));
        }
        assertEq(outside + token.balanceOf(address(s)), 1_000_000_000 ether, "held");
    }

    function invariant_noWithdrawalPaysTwice() public view {
        assertEq(handler.doubleWithdrawals(), 0, "paid twice");
    }
}
