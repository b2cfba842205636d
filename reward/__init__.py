"""Preference pairs, reward-model training with TRL, honest evaluation, scoring and best-of-n.

Heavy pieces (torch, transformers, TRL) load only when used.
"""

from reward.errors import RewardError
from reward.pairs import PairStats, PreferencePair, Vote, build_pairs, split_by_prompt
from reward.scoring import BestOfN, RewardModel, best_of_n, best_of_n_many

__all__ = [
    "RewardError", "PairStats", "PreferencePair", "Vote", "build_pairs", "split_by_prompt", "RewardModel",
    "BestOfN", "best_of_n", "best_of_n_many", "train_reward_model", "load_config", "TheraRewardConfig",
    "evaluate_model", "score_responses", "best_responses", "train_and_record", "read_preference_file",
]


def __getattr__(name: str):
    if name == "train_reward_model":
        from reward.train import train_reward_model

        return train_reward_model
    if name in ("load_config", "TheraRewardConfig"):
        from reward import config

        return getattr(config, name)
    if name == "evaluate_model":
        from reward.evaluate import evaluate_model

        return evaluate_model
    if name == "train_and_record":
        from reward.run import train_and_record

        return train_and_record
    if name == "read_preference_file":
        from reward.data import read_preference_file

        return read_preference_file
    if name in ("score_responses", "best_responses"):
        from reward import store

        return getattr(store, name)
    raise AttributeError(name)
