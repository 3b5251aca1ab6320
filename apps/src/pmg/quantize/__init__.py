"""Stage "quantize": each user's modal preference → a few discrete preference tokens."""

from pmg.quantize.stage import QUANTIZE_STAGE, QuantizeConfig, QuantizeModule, UserTokens, load_user_tokens

__all__ = ["QUANTIZE_STAGE", "QuantizeConfig", "QuantizeModule", "UserTokens", "load_user_tokens"]
