"""The seed's module API (EE-559 mini-project 2), compiled by n2ngraph.

Code written against the course framework runs unchanged::

    from n2ngraph.compat import Conv2d, ReLU, Sigmoid, Upsampling, Sequential, MSE, SGD
    net = Sequential(Conv2d(3, 24, 3, stride=2, padding=1), ReLU(), ...,
                     Upsampling(24, 3, 3, padding=1), Sigmoid())
    criterion, optimizer = MSE(), SGD(net.param(), lr=1.5)
    loss = criterion.forward(net.forward(noisy), target)
    # then zero_grad, the net's backward of the criterion's backward, step: README.md,
    # "The seed's module API" (the purity grep keeps backward calls out of the package)

Nothing is computed here. A module describes itself as spec nodes (``_emit``); using it
compiles those nodes into a ``Program`` that adopts the module's own ``weight`` and
``bias`` tensors, so whatever the user or ``SGD`` writes into them is what the program
reads (a tensor assigned in their place is noticed, and the program rebuilt).
``backward`` runs the 'vjp' plan: the forward, then reverse mode seeded with the given
output gradient; the parameter gradients are *added* to the module's
``grad_weight``/``grad_bias``, which accumulate until ``zero_grad`` as in torch. A module
cannot know at forward time that a backward will follow, so ``forward`` runs the lean
inference plan at an input shape never backpropagated; once a backward has run at that
shape (a training loop, from its second step), ``forward`` runs the vjp plan's forward
half instead, which keeps in that plan's buffers what the reverse half reads, and the
backward then runs the reverse half alone. It recomputes the forward first whenever the
kept values may not be those of its input and parameters (one written or replaced in
between, a last forward at a shape never backpropagated, a second backward, another
thread count; as with autograd, an in-place write through ``.data`` is not seen:
``runtime/vjp.py``), so both ways give the same bits. ``MSE`` keeps its forward always.
A ``Sequential`` compiles as one network, not module by module; with a user's own module
inside (anything with ``forward`` and ``backward``), each run of compat modules between
user modules is compiled and the user's module called in between. Tensors that require
grad are read through ``detach()``: nothing here records autograd. ``Model`` is the seed's
model.py: the seed network with its recipe, trained and run through n2ngraph.
"""

from .model import Model
from .modules import (MSE, SGD, Conv2d, ConvTranspose2d, Module, MSELoss, NearestUpsampling,
                      ReLU, Sequential, Sigmoid, TransposeConv2d, Upsample, Upsampling)

# ConvTranspose2d, MSELoss and Upsample: the names students also used, with torch's signatures
__all__ = ["Module", "Conv2d", "TransposeConv2d", "NearestUpsampling", "Upsampling", "ReLU",
           "Sigmoid", "Sequential", "MSE", "SGD", "Model", "ConvTranspose2d", "MSELoss", "Upsample"]
