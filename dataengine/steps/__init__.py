"""Each data step's pure logic: the OpenVE reader, selection, portrait pairs, shard sets."""
