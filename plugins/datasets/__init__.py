"""Built-in dataset adapters: MSD (decathlon), ACDC, Synapse, the no-download MNI152 demo and the
unlabelled pool of stage-1 pre-training."""

from samora_kit.hookspecs import hookimpl

from . import acdc, decathlon, mni152_demo, synapse, unlabelled_pool


@hookimpl
def samora_kit_register(registry) -> None:
    registry.add("dataset", decathlon.NAME, decathlon.DecathlonConfig, decathlon.build_decathlon,
                 example=decathlon.EXAMPLE)
    registry.add("dataset", acdc.NAME, acdc.AcdcConfig, acdc.build_acdc, example=acdc.EXAMPLE)
    registry.add("dataset", synapse.NAME, synapse.SynapseConfig, synapse.build_synapse, example=synapse.EXAMPLE)
    registry.add("dataset", mni152_demo.NAME, mni152_demo.Mni152DemoConfig, mni152_demo.build_mni152_demo,
                 example={})
    registry.add("dataset", unlabelled_pool.NAME, unlabelled_pool.UnlabelledPoolConfig,
                 unlabelled_pool.build_unlabelled_pool, example=unlabelled_pool.EXAMPLE)
