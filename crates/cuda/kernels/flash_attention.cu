// flash_attention kernels
