"""A click-through-rate example with drift: user and ad id embeddings + dense features -> MLP ->
click probability, and a generated world whose ad popularity changes abruptly mid-stream while
new ads appear.

The world (numpy only): each user and ad has a latent taste vector, each ad a popularity (a
logit bias), and four dense context features with fixed weights; a click happens with
probability sigmoid(taste match + popularity + context). `drift()` flips every existing ad's
popularity around the mean (the popular become unpopular and back) and opens new, popular ads
whose ids the served model has never seen trained.
"""

from __future__ import annotations

import numpy as np

N_USERS = 500
N_ADS = 100
N_NEW_ADS = 20
N_DENSE = 4


class CTRWorld:
    def __init__(self, seed: int = 0, n_users: int = N_USERS, n_ads: int = N_ADS, n_new_ads: int = N_NEW_ADS,
                 dim: int = 4) -> None:
        rng = np.random.default_rng(seed)
        self.rng = np.random.default_rng(seed + 1)
        self.n_users, self.n_ads, self.n_new_ads = n_users, n_ads, n_new_ads
        self.users = rng.normal(0, 1, (n_users, dim))
        self.ads = rng.normal(0, 1, (n_ads + n_new_ads, dim))
        self.popularity = rng.normal(-1.2, 1.2, n_ads + n_new_ads)
        self.dense_w = rng.normal(0, 0.6, N_DENSE)
        self.active_ads = n_ads
        self.drifted = False

    def drift(self) -> None:
        """Abrupt: reverse the popularity of existing ads; new, popular ads appear."""
        old = self.popularity[:self.n_ads]
        self.popularity[:self.n_ads] = 2 * old.mean() - old
        self.popularity[self.n_ads:] = self.rng.normal(old.mean() + 1.0, 1.2, self.n_new_ads)
        self.active_ads = self.n_ads + self.n_new_ads
        self.drifted = True

    def impressions(self, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """n impressions (model inputs) and each one's true click probability."""
        user = self.rng.integers(0, self.n_users, n)
        ad = self.rng.integers(0, self.active_ads, n)
        dense = self.rng.normal(0, 1, (n, N_DENSE)).astype(np.float32)
        match = np.sum(self.users[user] * self.ads[ad], axis=1) / np.sqrt(self.users.shape[1])
        logit = 1.2 * match + self.popularity[ad] + dense @ self.dense_w
        prob = 1 / (1 + np.exp(-logit))
        return {"user": user.astype(np.int64), "ad": ad.astype(np.int64), "dense": dense}, prob

    def clicks(self, prob: np.ndarray) -> np.ndarray:
        return (self.rng.random(len(prob)) < prob).astype(np.float32)


def make(n_users: int = N_USERS, n_ads: int = N_ADS + N_NEW_ADS, dim: int = 8, hidden: int = 32):
    """The served model (a torch module; needs torch): embeddings + dense -> MLP -> p [batch, 1]."""
    import torch
    from torch import nn

    class CTRModel(nn.Module):
        input_names = ["user", "ad", "dense"]
        output_name = "p"

        def __init__(self) -> None:
            super().__init__()
            self.user_embedding = nn.Embedding(n_users, dim)
            self.ad_embedding = nn.Embedding(n_ads, dim)
            self.fc1 = nn.Linear(2 * dim + N_DENSE, hidden)
            self.fc2 = nn.Linear(hidden, 1)
            nn.init.normal_(self.user_embedding.weight, std=0.1)
            nn.init.normal_(self.ad_embedding.weight, std=0.1)

        def forward(self, user, ad, dense):
            h = torch.cat([self.user_embedding(user), self.ad_embedding(ad), dense], dim=1)
            return torch.sigmoid(self.fc2(torch.relu(self.fc1(h))))

        @staticmethod
        def example_inputs() -> dict:
            return {"user": torch.zeros(2, dtype=torch.long), "ad": torch.zeros(2, dtype=torch.long),
                    "dense": torch.zeros(2, N_DENSE)}

    return CTRModel()
