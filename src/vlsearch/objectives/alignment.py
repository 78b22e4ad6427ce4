"""Title-Image Alignment (TIA): a product's image vector should pick out its own title among
the batch's titles, and its title its image (CLIP's symmetric InfoNCE, inside the product
tower).

Not in MAKE or Delving, whose image tower learns only through the query-product match and
masked patches: with titles that name the colour for ~89 % of products, the match can be won
from the title alone and the image tower is never asked what it shows. Aligning the image
vector with the title vector in the same space teaches it the attributes titles name
(colour, category, gender), so a product whose title leaves one out still carries it in its
image vector. The loss is :class:`QueryProductMatching` without log Q correction (no query
sampling here) run both ways over the products that have an image; another row of the same
product is not a negative.
"""

from __future__ import annotations

from torch import Tensor, nn

from vlsearch.objectives.matching import QueryProductMatching


class TitleImageAlignment(nn.Module):
    """Symmetric contrastive loss between L2-normalised title and image vectors ``[B, E]``."""

    def __init__(self, init_temperature: float):
        super().__init__()
        self.match = QueryProductMatching(init_temperature, logq_correction=False)

    def forward(self, title: Tensor, image: Tensor, product_ids: Tensor, has_image: Tensor) -> Tensor:
        rows = has_image.nonzero(as_tuple=True)[0]
        if len(rows) < 2:  # no negative to tell apart
            return title.new_zeros(())
        title, image, ids = title[rows], image[rows], product_ids[rows]
        return 0.5 * (self.match(image, title, ids).loss + self.match(title, image, ids).loss)
