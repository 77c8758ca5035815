// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Base} from "./Base.sol";
import {OPG} from "../src/OPG.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/// Signs EIP-3009 and EIP-2612 messages for the tests.
abstract contract Authorizations is Base {
    function domainOf(OPG token) internal view returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("OPG"),
                keccak256("1"),
                block.chainid,
                address(token)
            )
        );
    }

    function authorize(
        OPG token,
        bytes32 typehash,
        uint256 key,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce
    ) internal view returns (bytes memory) {
        bytes32 structHash = keccak256(abi.encode(typehash, vm.addr(key), to, value, validAfter, validBefore, nonce));
        return signature(key, keccak256(abi.encodePacked("\x19\x01", domainOf(token), structHash)));
    }
}

contract OPGTest is Authorizations {
    OPG token;
    uint256 constant ALICE = 0xA11CE;
    uint256 constant BOB = 0xB0B;
    address alice;
    address bob;

    function setUp() public {
        alice = vm.addr(ALICE);
        bob = vm.addr(BOB);
        token = new OPG(alice);
        vm.warp(1_000_000);
    }

    function transferAuth(uint256 key, address to, uint256 value, bytes32 nonce) internal view returns (bytes memory) {
        return
            authorize(
                token, token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), key, to, value, 0, block.timestamp + 60, nonce
            );
    }

    function test_fixedSupplyMintedOnceToTheHolder() public view {
        assertEq(token.totalSupply(), 1_000_000_000 ether, "supply");
        assertEq(token.balanceOf(alice), 1_000_000_000 ether, "holder");
        assertEq(token.decimals(), 18, "decimals");
        assertEq(keccak256(bytes(token.name())), keccak256("OPG"), "name");
        assertEq(keccak256(bytes(token.symbol())), keccak256("OPG"), "symbol");
        assertEq(token.DOMAIN_SEPARATOR(), domainOf(token), "EIP-712 domain: OPG, 1, chain id, address");
    }

    function test_permitApprovesBySignatureOnce() public {
        bytes32 permitTypehash =
            keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");
        uint256 deadline = block.timestamp + 100;
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                domainOf(token),
                keccak256(abi.encode(permitTypehash, alice, bob, 5 ether, token.nonces(alice), deadline))
            )
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(ALICE, digest);
        token.permit(alice, bob, 5 ether, deadline, v, r, s);
        assertEq(token.allowance(alice, bob), 5 ether, "allowance");
        assertEq(token.nonces(alice), 1, "nonce");
        // The same signature again: the nonce moved on, so it recovers another signer.
        vm.expectRevert();
        token.permit(alice, bob, 5 ether, deadline, v, r, s);
        // Expired.
        vm.warp(deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(ERC20Permit.ERC2612ExpiredSignature.selector, deadline));
        token.permit(alice, bob, 5 ether, deadline, v, r, s);
    }

    function test_transferWithAuthorizationMovesOnceAndAnyoneMaySubmit() public {
        bytes32 nonce = keccak256("job 1");
        bytes memory sig = transferAuth(ALICE, bob, 7 ether, nonce);
        assertTrue(!token.authorizationState(alice, nonce), "unused");
        vm.expectEmit();
        emit OPG.AuthorizationUsed(alice, nonce);
        vm.prank(address(0xFACE));
        token.transferWithAuthorization(alice, bob, 7 ether, 0, block.timestamp + 60, nonce, sig);
        assertEq(token.balanceOf(bob), 7 ether, "paid");
        assertTrue(token.authorizationState(alice, nonce), "used");
        vm.expectRevert(abi.encodeWithSelector(OPG.AuthorizationAlreadyUsed.selector, alice, nonce));
        token.transferWithAuthorization(alice, bob, 7 ether, 0, block.timestamp + 60, nonce, sig);
        assertEq(token.balanceOf(bob), 7 ether, "paid once");
    }

    function test_transferWithAuthorizationSplitSignature() public {
        bytes32 nonce = keccak256("split");
        bytes32 structHash = keccak256(
            abi.encode(
                token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), alice, bob, 1 ether, 0, block.timestamp + 60, nonce
            )
        );
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(ALICE, keccak256(abi.encodePacked("\x19\x01", domainOf(token), structHash)));
        token.transferWithAuthorization(alice, bob, 1 ether, 0, block.timestamp + 60, nonce, v, r, s);
        assertEq(token.balanceOf(bob), 1 ether, "paid");
    }

    function test_authorizationRefusals() public {
        bytes32 nonce = keccak256("n");
        uint256 before = block.timestamp + 60;
        bytes memory sig = transferAuth(ALICE, bob, 3 ether, nonce);
        // Another amount, recipient or payer than signed.
        vm.expectRevert(OPG.InvalidAuthorizationSignature.selector);
        token.transferWithAuthorization(alice, bob, 4 ether, 0, before, nonce, sig);
        vm.expectRevert(OPG.InvalidAuthorizationSignature.selector);
        token.transferWithAuthorization(alice, address(0xBAD), 3 ether, 0, before, nonce, sig);
        // (Signatures are made before `expectRevert`: making one reads the typehash, a call.)
        bytes memory toAlice = transferAuth(ALICE, alice, 3 ether, nonce);
        vm.expectRevert(OPG.InvalidAuthorizationSignature.selector);
        token.transferWithAuthorization(bob, alice, 3 ether, 0, before, nonce, toAlice);
        // Signed by someone else.
        bytes memory byBob = transferAuth(BOB, bob, 3 ether, nonce);
        vm.expectRevert(OPG.InvalidAuthorizationSignature.selector);
        token.transferWithAuthorization(alice, bob, 3 ether, 0, before, nonce, byBob);
        // A garbage signature.
        vm.expectRevert(OPG.InvalidAuthorizationSignature.selector);
        token.transferWithAuthorization(alice, bob, 3 ether, 0, before, nonce, hex"0102");
        // Outside the validity window.
        bytes memory later = authorize(
            token,
            token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(),
            ALICE,
            bob,
            3 ether,
            block.timestamp + 10,
            block.timestamp + 60,
            nonce
        );
        vm.expectRevert(
            abi.encodeWithSelector(OPG.AuthorizationNotYetValid.selector, block.timestamp + 10, block.timestamp)
        );
        token.transferWithAuthorization(alice, bob, 3 ether, block.timestamp + 10, block.timestamp + 60, nonce, later);
        vm.warp(before);
        vm.expectRevert(abi.encodeWithSelector(OPG.AuthorizationExpired.selector, before, before));
        token.transferWithAuthorization(alice, bob, 3 ether, 0, before, nonce, sig);
        // More than the payer holds.
        vm.warp(1_000_000);
        bytes memory broke = transferAuth(BOB, alice, 1, nonce);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, bob, 0, 1));
        token.transferWithAuthorization(bob, alice, 1, 0, block.timestamp + 60, nonce, broke);
        assertTrue(!token.authorizationState(alice, nonce), "nothing used");
        assertEq(token.balanceOf(bob), 0, "nothing moved");
    }

    function test_receiveWithAuthorizationOnlyByThePayee() public {
        bytes32 nonce = keccak256("r");
        uint256 before = block.timestamp + 60;
        bytes memory sig =
            authorize(token, token.RECEIVE_WITH_AUTHORIZATION_TYPEHASH(), ALICE, bob, 2 ether, 0, before, nonce);
        vm.expectRevert(abi.encodeWithSelector(OPG.CallerMustBePayee.selector, address(this), bob));
        token.receiveWithAuthorization(alice, bob, 2 ether, 0, before, nonce, sig);
        // A transfer authorization is not a receive authorization, nor the reverse.
        bytes memory transferSig = transferAuth(ALICE, bob, 2 ether, nonce);
        vm.prank(bob);
        vm.expectRevert(OPG.InvalidAuthorizationSignature.selector);
        token.receiveWithAuthorization(alice, bob, 2 ether, 0, before, nonce, transferSig);
        vm.expectRevert(OPG.InvalidAuthorizationSignature.selector);
        token.transferWithAuthorization(alice, bob, 2 ether, 0, before, nonce, sig);
        vm.prank(bob);
        token.receiveWithAuthorization(alice, bob, 2 ether, 0, before, nonce, sig);
        assertEq(token.balanceOf(bob), 2 ether, "received");
    }

    function test_cancelAuthorization() public {
        bytes32 nonce = keccak256("c");
        bytes32 cancelDigest = keccak256(
            abi.encodePacked(
                "\x19\x01", domainOf(token), keccak256(abi.encode(token.CANCEL_AUTHORIZATION_TYPEHASH(), alice, nonce))
            )
        );
        vm.expectRevert(OPG.InvalidAuthorizationSignature.selector);
        token.cancelAuthorization(alice, nonce, signature(BOB, cancelDigest));
        vm.expectEmit();
        emit OPG.AuthorizationCanceled(alice, nonce);
        token.cancelAuthorization(alice, nonce, signature(ALICE, cancelDigest));
        assertTrue(token.authorizationState(alice, nonce), "canceled");
        bytes memory sig = transferAuth(ALICE, bob, 1 ether, nonce);
        vm.expectRevert(abi.encodeWithSelector(OPG.AuthorizationAlreadyUsed.selector, alice, nonce));
        token.transferWithAuthorization(alice, bob, 1 ether, 0, block.timestamp + 60, nonce, sig);
        vm.expectRevert(abi.encodeWithSelector(OPG.AuthorizationAlreadyUsed.selector, alice, nonce));
        token.cancelAuthorization(alice, nonce, signature(ALICE, cancelDigest));
    }

    /// Whatever the amount, recipient and nonce: an authorization moves its amount once.
    function testFuzz_anAuthorizationIsUsableOnce(uint256 value, address to, bytes32 nonce) public {
        vm.assume(to != address(0) && to != alice);
        value = bound(value, 1, token.balanceOf(alice));
        bytes memory sig = transferAuth(ALICE, to, value, nonce);
        token.transferWithAuthorization(alice, to, value, 0, block.timestamp + 60, nonce, sig);
        assertEq(token.balanceOf(to), value, "paid");
        vm.expectRevert(abi.encodeWithSelector(OPG.AuthorizationAlreadyUsed.selector, alice, nonce));
        token.transferWithAuthorization(alice, to, value, 0, block.timestamp + 60, nonce, sig);
        assertEq(token.totalSupply(), 1_000_000_000 ether, "supply");
    }
}

/// Random transfers, authorizations, replays and cancellations among a few holders.
contract TokenHandler is Authorizations {
    OPG public immutable token;
    uint256[] public keys;
    bytes32[] public usedNonces;
    address[] public usedBy;
    uint256 public replaysAccepted;

    constructor(OPG token_, uint256[] memory keys_) {
        token = token_;
        keys = keys_;
    }

    function transfer(uint256 from, uint256 to, uint256 amount) external {
        address a = vm.addr(keys[from % keys.length]);
        address b = vm.addr(keys[to % keys.length]);
        amount = bound(amount, 0, token.balanceOf(a));
        vm.prank(a);
        assertTrue(token.transfer(b, amount), "transfer");
    }

    function authorized(uint256 from, uint256 to, uint256 amount, bytes32 nonce) external {
        uint256 key = keys[from % keys.length];
        address a = vm.addr(key);
        address b = vm.addr(keys[to % keys.length]);
        amount = bound(amount, 0, token.balanceOf(a));
        if (token.authorizationState(a, nonce)) return;
        bytes memory sig = authorize(
            token, token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), key, b, amount, 0, block.timestamp + 1, nonce
        );
        token.transferWithAuthorization(a, b, amount, 0, block.timestamp + 1, nonce, sig);
        usedNonces.push(nonce);
        usedBy.push(a);
    }

    /// Tries an already used authorization again: it must not go through.
    function replay(uint256 i, uint256 to, uint256 amount) external {
        if (usedNonces.length == 0) return;
        i %= usedNonces.length;
        address a = usedBy[i];
        uint256 key;
        for (uint256 k = 0; k < keys.length; k++) {
            if (vm.addr(keys[k]) == a) key = keys[k];
        }
        address b = vm.addr(keys[to % keys.length]);
        amount = bound(amount, 0, token.balanceOf(a));
        bytes memory sig = authorize(
            token, token.TRANSFER_WITH_AUTHORIZATION_TYPEHASH(), key, b, amount, 0, block.timestamp + 1, usedNonces[i]
        );
        try token.transferWithAuthorization(a, b, amount, 0, block.timestamp + 1, usedNonces[i], sig) {
            replaysAccepted++;
        } catch {}
    }

    function keyCount() external view returns (uint256) {
        return keys.length;
    }
}

contract OPGInvariantTest is Base {
    OPG token;
    TokenHandler handler;

    function setUp() public {
        uint256[] memory keys = new uint256[](4);
        for (uint256 i = 0; i < 4; i++) {
            keys[i] = 0x1000 + i;
        }
        token = new OPG(vm.addr(keys[0]));
        handler = new TokenHandler(token, keys);
        targetContract(address(handler));
    }

    function invariant_supplyIsFixedAndHeldByTheHolders() public view {
        assertEq(token.totalSupply(), 1_000_000_000 ether, "supply");
        uint256 held;
        for (uint256 i = 0; i < handler.keyCount(); i++) {
            held += token.balanceOf(vm.addr(handler.keys(i)));
        }
        assertEq(held, 1_000_000_000 ether, "every token with a holder");
    }

    function invariant_noAuthorizationUsedTwice() public view {
        assertEq(handler.replaysAccepted(), 0, "replays accepted");
    }
}
