"""Plain nn.Modules. Constructors never touch the network; weights load in toolkit.models.weights."""
