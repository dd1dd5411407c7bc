"""A fleet of replicas coordinated through ZooKeeper: membership (each replica's ephemeral
znode, kept current from its event bus), the routing intent every replica follows (a
RoutingStore in ZooKeeper), and the two-phase rollout that flips the fleet's serving version
at one moment after every replica has it loaded and warm. Uses core's and repository's public
interfaces only; kazoo is the `fleet` extra."""
