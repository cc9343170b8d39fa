"""nftables for the agent: the libnftables JSON binding (``libnft``) and our table as data (``ruleset``).

Every nftables user in the agent goes through ``libnft.Nft`` (no ``nft`` subprocess); the agent owns
one table, ``inet cantainer``, built whole by ``ruleset.build`` from the cluster state and kept by
``controllers/netfilter.py``. docs/security.md says what the rules enforce and why.
"""
from .libnft import Nft, NftError, NftUnavailable, nft_available
from .ruleset import TABLE, Ruleset, build

__all__ = ["Nft", "NftError", "NftUnavailable", "nft_available", "TABLE", "Ruleset", "build"]
