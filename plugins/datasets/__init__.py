"""Built-in dataset adapters: MSD (decathlon), ACDC, Synapse, LA (UA-MT h5), PROMISE12 (MetaImage), the
no-download MNI152 demo and the unlabelled pool of stage-1 pre-training. (The miniature world's source
domain, Kvasir-SEG and generated scenes, lives with the benchmarks: samora_benchmarks.datasets.)"""

from samora_kit.api import hookimpl

from . import acdc, convert, decathlon, la, mni152_demo, promise12, synapse, unlabelled_pool


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("dataset", decathlon.NAME, decathlon.DecathlonConfig, decathlon.build_decathlon,
                 example=decathlon.EXAMPLE)
    registry.add("dataset", acdc.NAME, acdc.AcdcConfig, acdc.build_acdc, example=acdc.EXAMPLE)
    registry.add("dataset", synapse.NAME, synapse.SynapseConfig, synapse.build_synapse, example=synapse.EXAMPLE)
    registry.add("dataset", la.NAME, la.LaConfig, la.build_la, example=la.EXAMPLE)
    registry.add("dataset", promise12.NAME, promise12.Promise12Config, promise12.build_promise12,
                 example=promise12.EXAMPLE)
    registry.add("dataset", mni152_demo.NAME, mni152_demo.Mni152DemoConfig, mni152_demo.build_mni152_demo,
                 example={})
    registry.add("dataset", unlabelled_pool.NAME, unlabelled_pool.UnlabelledPoolConfig,
                 unlabelled_pool.build_unlabelled_pool, example=unlabelled_pool.EXAMPLE)
    convert.register(registry)
