// SPDX-License-Identifier: MIT
// Test contracts for tests/chain/test_anvil.py, compiled there with solcjs 0.8.28 (npm `solc`).
// They emit the standard events with their real signatures: ERC-721 Transfer, ERC-1155 TransferSingle and
// TransferBatch, ERC-4906 MetadataUpdate and BatchMetadataUpdate, and Seaport's OrderFulfilled; the tokens
// answer tokenURI (ERC-721) and uri (ERC-1155) for the metadata fetcher.
pragma solidity 0.8.28;

contract TestERC721 {
    event Transfer(address indexed from, address indexed to, uint256 indexed tokenId);
    event ApprovalForAll(address indexed owner, address indexed operator, bool approved);
    event MetadataUpdate(uint256 _tokenId);
    event BatchMetadataUpdate(uint256 _fromTokenId, uint256 _toTokenId);

    mapping(uint256 => address) private owners;
    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => bool)) public isApprovedForAll;

    function ownerOf(uint256 id) external view returns (address) {
        address owner = owners[id];
        require(owner != address(0), "not minted");
        return owner;
    }

    function mint(address to, uint256 id) external {
        require(to != address(0) && owners[id] == address(0), "bad mint");
        owners[id] = to;
        balanceOf[to] += 1;
        emit Transfer(address(0), to, id);
    }

    // Many mints in one transaction: how bench/follow.py fills blocks with logs quickly.
    function mintMany(address to, uint256 first, uint256 count) external {
        for (uint256 id = first; id < first + count; id++) {
            require(owners[id] == address(0), "bad mint");
            owners[id] = to;
            emit Transfer(address(0), to, id);
        }
        balanceOf[to] += count;
    }

    function setApprovalForAll(address operator, bool approved) external {
        isApprovedForAll[msg.sender][operator] = approved;
        emit ApprovalForAll(msg.sender, operator, approved);
    }

    function transferFrom(address from, address to, uint256 id) public {
        require(owners[id] == from && to != address(0), "bad transfer");
        require(msg.sender == from || isApprovedForAll[from][msg.sender], "not allowed");
        owners[id] = to;
        balanceOf[from] -= 1;
        balanceOf[to] += 1;
        emit Transfer(from, to, id);
    }

    function burn(uint256 id) external {
        address owner = owners[id];
        require(owner == msg.sender, "not the owner");
        delete owners[id];
        balanceOf[owner] -= 1;
        emit Transfer(owner, address(0), id);
    }

    function refresh(uint256 id) external {
        emit MetadataUpdate(id);
    }

    function refreshRange(uint256 first, uint256 last) external {
        emit BatchMetadataUpdate(first, last);
    }

    // ERC-721 metadata: tokenURI is <base><id>.json, for minted tokens only.
    string private baseURI;

    function setBaseURI(string calldata base) external {
        baseURI = base;
    }

    function tokenURI(uint256 id) external view returns (string memory) {
        require(owners[id] != address(0), "not minted");
        return string.concat(baseURI, decimal(id), ".json");
    }

    function decimal(uint256 value) private pure returns (string memory) {
        if (value == 0) return "0";
        uint256 digits;
        for (uint256 v = value; v != 0; v /= 10) digits++;
        bytes memory out = new bytes(digits);
        while (value != 0) {
            digits--;
            out[digits] = bytes1(uint8(48 + (value % 10)));
            value /= 10;
        }
        return string(out);
    }
}

contract TestERC1155 {
    event TransferSingle(
        address indexed operator, address indexed from, address indexed to, uint256 id, uint256 value
    );
    event TransferBatch(
        address indexed operator, address indexed from, address indexed to, uint256[] ids, uint256[] values
    );

    mapping(uint256 => mapping(address => uint256)) private balances;

    // ERC-1155's balanceOf(account, id): what Pulse's balances are checked against.
    function balanceOf(address account, uint256 id) external view returns (uint256) {
        return balances[id][account];
    }

    // ERC-1155 metadata: one URI for every id, with {id} for the client to substitute.
    string private template;

    function setURI(string calldata value) external {
        template = value;
    }

    function uri(uint256) external view returns (string memory) {
        return template;
    }

    function mint(address to, uint256 id, uint256 value) external {
        balances[id][to] += value;
        emit TransferSingle(msg.sender, address(0), to, id, value);
    }

    // safeTransferFrom without the data argument and the receiver hook: the same balances and event.
    function transfer(address from, address to, uint256 id, uint256 value) external {
        require(msg.sender == from, "not the holder");
        balances[id][from] -= value;
        balances[id][to] += value;
        emit TransferSingle(msg.sender, from, to, id, value);
    }

    function burn(address from, uint256 id, uint256 value) external {
        require(msg.sender == from, "not the holder");
        balances[id][from] -= value;
        emit TransferSingle(msg.sender, from, address(0), id, value);
    }

    function safeBatchTransferFrom(address from, address to, uint256[] calldata ids, uint256[] calldata values)
        external
    {
        require(msg.sender == from && ids.length == values.length, "bad batch");
        for (uint256 i = 0; i < ids.length; i++) {
            balances[ids[i]][from] -= values[i];
            balances[ids[i]][to] += values[i];
        }
        emit TransferBatch(msg.sender, from, to, ids, values);
    }
}

// Seaport's structs and event, as Seaport 1.5/1.6 declare them.
enum ItemType { NATIVE, ERC20, ERC721, ERC1155, ERC721_WITH_CRITERIA, ERC1155_WITH_CRITERIA }

struct SpentItem {
    ItemType itemType;
    address token;
    uint256 identifier;
    uint256 amount;
}

struct ReceivedItem {
    ItemType itemType;
    address token;
    uint256 identifier;
    uint256 amount;
    address payable recipient;
}

// A one-function stand-in for Seaport, placed at Seaport 1.6's address by the test (anvil_setCode): it
// fills a listing paid in ETH the way Seaport does (the NFT moves, the seller and the fee recipient are
// paid) and emits the real OrderFulfilled event.
contract TestSeaport {
    event OrderFulfilled(
        bytes32 orderHash,
        address indexed offerer,
        address indexed zone,
        address recipient,
        SpentItem[] offer,
        ReceivedItem[] consideration
    );

    function fulfil(TestERC721 nft, uint256 id, address payable seller, address payable fees, uint256 fee)
        external
        payable
    {
        require(fee <= msg.value, "fee above price");
        nft.transferFrom(seller, msg.sender, id);
        SpentItem[] memory offer = new SpentItem[](1);
        offer[0] = SpentItem(ItemType.ERC721, address(nft), id, 1);
        ReceivedItem[] memory consideration = new ReceivedItem[](2);
        consideration[0] = ReceivedItem(ItemType.NATIVE, address(0), 0, msg.value - fee, seller);
        consideration[1] = ReceivedItem(ItemType.NATIVE, address(0), 0, fee, fees);
        seller.transfer(msg.value - fee);
        fees.transfer(fee);
        bytes32 orderHash = keccak256(abi.encode(address(nft), id, seller, msg.value));
        emit OrderFulfilled(orderHash, seller, address(0), msg.sender, offer, consideration);
    }
}
